"""A sequence's text as its tokens come: whole characters only (a token may end inside a UTF-8
character: its bytes wait for the next), cut before the first stop sequence, and text that
might be the start of a stop sequence held back until it is not (what llama.cpp's server and
vLLM's detokenizer do, so that a stream never shows a stop sequence it then takes back).

Tokens travel with their text: `feed` releases the tokens (and their log-probabilities) whose
text it releases, so a stream's `logprobs` cover the text it sends."""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, encoder, stops: list[str]):
        self._bytes = encoder.decode_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=encoder.errors)
        self.stops = stops
        self.text = ""  # released so far
        self._pending = ""  # decoded, not yet released
        self._tokens: list = []  # (token, score, its text) not yet released
        self.stopped = False  # a stop sequence was found: nothing more comes

    def feed(self, tokens, scores=None) -> tuple[str, list, list]:
        """(text, tokens, scores) released by these new tokens."""
        if self.stopped:
            return "", [], []
        scores = scores if scores is not None else [None] * len(tokens)
        for token, score in zip(tokens, scores):
            piece = self._decoder.decode(self._bytes([token]))
            self._pending += piece
            self._tokens.append((token, score, piece))
        return self._release(final=False)

    def flush(self) -> tuple[str, list, list]:
        """What is left when the sequence ends (its length, or <|endoftext|>)."""
        if self.stopped:
            return "", [], []
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> tuple[str, list, list]:
        cut = self._first_stop()
        if cut is not None:  # the text before the stop; the tokens that began before it
            self.stopped = True
            return self._take(cut, lambda start, end: start < cut or (start == cut == end))
        # Else the tokens that end before the held-back text, and exactly their text.
        limit = len(self._pending) - (0 if final else self._held_back())
        return self._take(None, lambda start, end: end <= limit)

    def _first_stop(self) -> int | None:
        found = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """How many characters at the end of the pending text may begin a stop sequence."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _take(self, cut: int | None, released) -> tuple[str, list, list]:
        """Release the pending tokens for which released(start, end) holds (their text's span in
        the pending text), and the text up to `cut` (None: up to the last released token)."""
        tokens, scores, at, end = [], [], 0, 0
        for token, score, piece in self._tokens:
            if not released(at, at + len(piece)):
                break
            tokens.append(token)
            scores.append(score)
            at += len(piece)
            end = at
        n = end if cut is None else cut
        text, self._pending = self._pending[:n], self._pending[n:]
        self._tokens = [] if self.stopped else self._tokens[len(tokens) :]
        self.text += text
        return text, tokens, scores
