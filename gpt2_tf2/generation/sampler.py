"""The rows of one sampling call (`LanguageModel.generate_tokens`, `stream_tokens`), window by
window, on the decode engine (`EngineRows`), on either backend (xla, tflite).

A call's rows are a fixed batch that starts together and ends when its last row does. Within
the model's context a row is one window: its prompt, then `length` tokens. Past the context the
window slides (as openai/gpt-2's users did by hand): the last n_ctx - window_stride tokens of
each row become its prompt in the next window, their cache recomputed, and up to
`window_stride` more tokens follow, each window's draws under a key of its own. `EngineRows`
holds that logic once, for both backends.
"""

from __future__ import annotations

from gpt2_tf2.generation.checks import cache_columns
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.engine import Engine, Request


class EngineRows:
    """One sampling call's rows on the decode engine (`engine.Engine`, either backend):
    `config` validated for the model, `stop` its stop token (-1: none). One engine of as many
    slots as rows per cache size, kept for the call, its rows started (from one prefill, for
    every batch of one prompt) and removed when the window ends. The cache holds the prompt
    bucket and the length bucket, so one compilation serves every prompt and length of those
    buckets."""

    def __init__(self, lm, config: GenerationConfig, stop: int):
        self.lm, self.config, self.stop = lm, config, stop
        self.n_ctx = lm.hparams.n_ctx
        self.engines = {}  # (slots, cache_len) -> Engine

    def first_window(self, contexts):
        """The prompts run once: what the first window continues from (`sample`'s `first`;
        every batch of one prompt starts from the same)."""
        return self.prefill(contexts, self._first_length(contexts))

    def _first_length(self, contexts) -> int:
        return min(self.config.length, self.n_ctx - max(len(c) for c in contexts))

    def sample(self, contexts, key, chunk=None, first=None):
        """The new tokens after `contexts` (one prompt per row), in pieces ([batch][k] ids; a
        piece per `chunk` tokens, else per window), under the sampler's key (seed, batch)."""
        length, stride = self.config.length, self.config.window_stride
        rows = [list(c) for c in contexts]
        made, segment = 0, 0
        n = self._first_length(contexts)
        started = first if first is not None else self.prefill(contexts, n)
        while made < length:
            seed, batch_index = key  # a window's draws get their own key; the first, the plain one
            for piece in self.run(started, (int(seed), batch_index + (segment << 32)), chunk):
                for row, new in zip(rows, piece):
                    row += new
                yield piece
            if self.stop >= 0 and all(self.stop in r[len(c) :] for r, c in zip(rows, contexts)):
                return
            made += n
            segment += 1
            if made < length:
                windows = [row[-(self.n_ctx - stride) :] for row in rows]
                n = min(length - made, self.n_ctx - max(len(w) for w in windows))
                started = self.prefill(windows, n)

    def prefill(self, contexts, length):
        """The prompts (one per row) run once, ready for `run` to make `length` tokens."""
        # A window's prompt and length fit the context: the buckets' sum, at most n_ctx.
        cache_len = cache_columns(self.n_ctx, max(len(c) for c in contexts), length)
        shape = (len(contexts), cache_len)
        if shape not in self.engines:
            self.engines[shape] = Engine(self.lm, *shape)
        engine = self.engines[shape]
        config = GenerationConfig.of(self.config, length=length)
        requests = [Request(c, config, None, i) for i, c in enumerate(contexts)]
        return engine, engine.prefill(requests)

    def run(self, started, key, chunk=None):
        """A window's tokens ([batch][k] ids), all at once or in pieces of `chunk`; a row that
        ends on the stop token has it as its last token, and nothing after it."""
        engine, prefill = started
        slots = engine.start(prefill, keys=[key] * len(prefill.rows))
        ended = set()  # rows whose stop token was given
        try:
            step = chunk or max(length for _, _, length in prefill.rows)
            while True:
                out = engine.step(step)
                piece = []
                for s in slots:  # a row's stop token ends its piece, as the compiled loop's
                    if engine.stopped(s) and s not in ended:
                        ended.add(s)
                        piece.append(out[s] + [self.stop])
                    else:
                        piece.append(out[s])
                yield piece
                if set(engine.finished()).issuperset(slots):
                    return
        finally:
            for s in slots:
                engine.remove(s)
