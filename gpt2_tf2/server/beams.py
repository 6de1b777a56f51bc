"""Beam search requests (vLLM's legacy `use_beam_search`): the library's own beam search
(`LanguageModel.beam_search`, the one tested against transformers), run beside the decode
engine, not in its slots: num_beams rows that reorder themselves every step are a different
loop from the engine's independent rows. One search at a time, in a worker thread; the search
runs in pieces, and a client that goes away stops it at the end of the current piece."""

from __future__ import annotations

import threading

from gpt2_tf2.errors import UserError
from gpt2_tf2.server.protocol import APIError, Job


class Cancelled(Exception):
    """The client went away: the search stops between pieces."""


class Beams:
    def __init__(self, lm):
        self.lm = lm
        self._one_at_a_time = threading.Lock()

    def run(self, job: Job, gone: threading.Event) -> list[list[int]]:
        """The tokens of each choice of `job`, in its order: each prompt's n best beams, best
        first (continuations; the end-of-text token, where a beam ended, not included)."""

        def progress(done: int, length: int) -> None:
            if gone.is_set():
                raise Cancelled

        out = []
        with self._one_at_a_time:
            for p, tokens in enumerate(job.prompts):
                config = job.choices[p * job.n].config
                try:
                    out += self.lm.beam_search(tokens, config, progress=progress)
                except UserError as e:  # e.g. a model served on TensorFlow Lite
                    raise APIError(400, str(e), "use_beam_search") from None
        return out
