"""A decode engine: a fixed number of slots over one key/value cache, rows joining and leaving
a running batch between steps (continuous batching, as vLLM's scheduler and llama.cpp's server
slots do it).

Each slot is one sequence at its own position: its prompt is run (with those of the rows that
join at the same time, as one batch: `add_many`) and its cache rows copied into the slot; then
every `step` advances every busy slot by one token over fixed shapes [slots, ...], each row with
its own settings (temperature, top-k, top-p, penalties, n-gram size, key, stop token, length),
so that nothing recompiles when a row joins. The rows live in a store of the model's backend
(on xla, `xla.XlaSlots`: one compiled loop; on tflite, `lite.LiteSlots`: the interpreter's
step); both answer the same calls (prefill, start, advance, read, scores, cancel, reset). A
row's tokens depend on its own prompt, settings, key and step only: it draws the same tokens
whenever it joins and whoever else runs (tests/test_engine.py checks it against the row run
alone).
Processors and strategies are the ones every loop shares (`processors`, `strategies`), given
per-row settings.

    engine = Engine(lm, slots=4)
    slot = engine.add(prompt_ids, GenerationConfig(length=20, top_k=40, seed=1))
    while engine.busy():
        for slot, tokens in engine.step(8).items(): ...  # new tokens per slot, as they come
        for slot in engine.finished(): engine.remove(slot)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.checks import check_token_ids, contexts_and_stop
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.logprobs import TokenScore, read_scores
from gpt2_tf2.generation.settings import Settings


class Request(NamedTuple):
    """A sequence to start (`Engine.add_many`): its prompt, settings, the sampler's (seed,
    batch) key (default (config.seed or 0, 0)), the row's number in that key's batch, and
    whether it keeps its tokens' scores (an engine made with logprobs > 0: `Engine.scores`)."""

    prompt_tokens: list
    config: GenerationConfig | None = None
    key: tuple | None = None
    row: int = 0
    scores: bool = True


class Prefill(NamedTuple):
    """Rows whose prompts have run (`Engine.prefill`), ready to start (`Engine.start`)."""

    rows: list  # (prompt tokens, Settings, length) per row, checked
    row_numbers: list  # each row's number in its key's batch
    logits: object  # [k, vocab] (a tensor, or a NumPy array on tflite): after each row's prompt
    cache: list  # [k * heads, cache_len, head_dim] per tensor
    scores: tuple  # each row's wish for its tokens' scores (`Request.scores`)


class Engine:
    """`slots` sequences decoded together on `lm`'s model (a `LanguageModel`, on either
    backend); `cache_len` (default the model's context) bounds prompt + length of each.
    logprobs: with k > 0, each token's log-probability and the k most likely tokens at its
    step are kept (`scores`), for the rows that ask (`Request.scores`): a step while none of
    them runs skips computing them (a server's requests mostly do not ask). grow_cache (xla):
    the cache starts as wide as the rows need and widens as they grow (powers of two up to
    cache_len, each a compilation), and narrows again when the engine empties: every step
    attends over the columns in use, not cache_len (a server's engine, whose rows are mostly
    far shorter than the context). busy_rows (xla): each step runs the slots up to the last
    running one (rounded up to a power of two, at least the size from which the CPU's kernels
    round a row alike in any larger step: `xla.exact_from`; each a compilation), not all of
    them: rows start in the lowest free slots, so a server's engine sized for its busiest hour
    pays for the rows it runs (one row on 16 slots cost 3.4 rows' time a step,
    docs/benchmarks/serving.md)."""

    def __init__(
        self,
        lm,
        slots: int,
        cache_len: int | None = None,
        logprobs: int = 0,
        grow_cache: bool = False,
        busy_rows: bool = False,
    ):
        n_ctx = lm.hparams.n_ctx
        self.lm, self.slots, self.cache_len = lm, int(slots), int(cache_len or n_ctx)
        if not 1 <= self.cache_len <= n_ctx or self.slots < 1:
            raise UserError(f"an engine needs slots >= 1 and cache_len in 1..{n_ctx}")
        if not isinstance(logprobs, int) or not 0 <= logprobs <= lm.hparams.n_vocab:
            raise UserError(f"`logprobs` must be an integer from 0 to {lm.hparams.n_vocab}")
        self.logprobs = logprobs
        if lm.lite is not None:
            from gpt2_tf2.generation.tflite import LiteSlots

            self._store = LiteSlots(lm, self.slots, self.cache_len, logprobs)
        else:
            from gpt2_tf2.generation.xla import XlaSlots

            self._store = XlaSlots(lm, self.slots, self.cache_len, logprobs, grow_cache, busy_rows)
        self._free = list(range(self.slots))
        self._read = {}  # slot -> tokens of its history already returned
        self._stopped = set()  # slots whose sequence ended on its stop token
        self._scores = {}  # slot -> TokenScores of the tokens `step` returned last
        self._scored = set()  # busy slots whose rows keep their scores
        self._done = None  # each slot's done flag as `step` last read it (None: read again)

    # ---- rows joining and leaving ---------------------------------------------------------

    def add(
        self,
        prompt_tokens,
        config: GenerationConfig | None = None,
        key=None,
        row: int = 0,
        scores: bool = True,
    ):
        """Start a sequence in a free slot (a UserError if none is free); returns the slot.

        config: its sampling settings, length (default: up to the cache) and stop_at_endoftext;
        key: the sampler's (seed, batch) key, default (config.seed or 0, 0); row: the row's
        number in that key's batch (`random.gumbel_noise`); scores: keep its tokens' scores
        (with an engine made with logprobs > 0)."""
        return self.add_many([Request(prompt_tokens, config, key, row, scores)])[0]

    def add_many(self, requests) -> list[int]:
        """Start several sequences at once (`Request`s, or tuples of their fields), each in a
        free slot; returns their slots, in order. Their prompts run as one batch, so k rows
        cost about one prompt's pass over the weights instead of k (what a server does with the
        requests that queued during a step, as vLLM's scheduler batches its prefills). Each
        row's tokens are those it gives when added alone. Fewer free slots than requests: a
        UserError, and none is started."""
        requests = [Request(*r) for r in requests]
        self._check_free(len(requests))
        return self.start(self.prefill(requests)) if requests else []

    def prefill(self, requests) -> Prefill:
        """Check the requests and run their prompts as one batch, without starting them: what
        `start` starts, as often as asked (a sampling call's batches of one prompt run it
        once). Nothing changes in the engine."""
        requests = [Request(*r) for r in requests]
        if not requests:
            raise UserError("no sequences to start")
        rows = [self._checked(r) for r in requests]  # every request checked before any runs
        logits, cache = self._store.prefill([tokens for tokens, _, _ in rows])
        wishes = tuple(bool(r.scores) for r in requests)
        return Prefill(rows, [int(r.row) for r in requests], logits, cache, wishes)

    def start(self, prefill: Prefill, keys=None) -> list[int]:
        """Start the rows of `prefill`, each in a free slot; returns their slots, in order.
        keys: the sampler's (seed, batch) key of each row instead of its request's."""
        rows = prefill.rows
        self._check_free(len(rows))
        slots = self._free[: len(rows)]
        settings = Settings.rows([s for _, s, _ in rows])
        if keys is not None:
            settings = settings._replace(seed=np.asarray(keys, np.int64))
        self._store.start(slots, prefill, settings)
        self._done = None
        del self._free[: len(rows)]
        for i, (slot, (tokens, _, _)) in enumerate(zip(slots, rows)):
            self._read[slot] = len(tokens)
            if self.logprobs and prefill.scores[i]:
                self._scored.add(slot)
        return slots

    def _check_free(self, n: int) -> None:
        if n and not self._free:
            raise UserError(f"all {self.slots} slots are busy; remove a finished one first")
        if n > len(self._free):
            raise UserError(
                f"{n} sequences to start but {len(self._free)} of {self.slots} "
                f"slots free; start fewer, or remove finished ones first"
            )

    def _checked(self, request: Request):
        """A request's prompt (as the model reads it), settings and length, checked."""
        config = GenerationConfig.of(request.config)
        if config.beams:
            raise UserError(
                "the decode engine samples or decodes greedily; a beam search runs in a BeamSearch"
            )
        tokens = list(request.prompt_tokens or [])
        check_token_ids(tokens, self.lm.hparams.n_vocab)
        (tokens,), stop = contexts_and_stop(self.lm.encoder, [tokens], config.stop_at_endoftext)
        if config.length is None:  # half the cache, as a prompt gets half the context
            config = GenerationConfig.of(config, length=max(1, self.cache_len // 2))
        # Checked against the model's context (a window_stride is one of it), then the cache.
        length = config.validate(self.lm.hparams.n_ctx, len(tokens)).length
        if len(tokens) + length > self.cache_len:
            raise UserError(
                f"prompt ({len(tokens)} tokens) + `length` ({length}) exceeds the engine's "
                f"{self.cache_len} positions"
            )
        key = request.key if request.key is not None else (config.seed or 0, 0)
        return tokens, Settings.make(config, key=key, stop_token=stop), length

    def remove(self, slot: int) -> None:
        """Free `slot` (finished or cancelled); its row stops at once, the others go on."""
        if slot in self._free or not 0 <= slot < self.slots:
            raise UserError(f"slot {slot} is not busy")
        self._store.cancel(slot)
        self._done = None
        if len(self._free) + 1 == self.slots:
            self._store.reset()  # empty: the next rows start afresh (a narrow cache)
        self._free.append(slot)
        self._free.sort()
        del self._read[slot]
        self._stopped.discard(slot)
        self._scored.discard(slot)
        self._scores.pop(slot, None)

    # ---- decoding -------------------------------------------------------------------------

    def busy(self) -> list[int]:
        """The slots holding a sequence (finished or not, until removed)."""
        return sorted(self._read)

    def finished(self) -> list[int]:
        """The busy slots whose sequence has ended (its length, or its stop token)."""
        done = self._done if self._done is not None else self._store.read()[2]
        return [s for s in self.busy() if done[s]]

    def stopped(self, slot: int) -> bool:
        """Whether `slot`'s sequence ended on its stop token (returned by `step` by then)."""
        return slot in self._stopped

    def step(self, n: int = 1) -> dict[int, list[int]]:
        """Advance every unfinished slot by up to `n` tokens; {slot: its new tokens} for each
        busy slot (a stop token is not returned)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"step takes a positive number of tokens, got {n!r}")
        scored = bool(self._scored)  # a row that asks is busy: the step computes the scores
        self._store.advance(n, scored)
        history, pos, done, stops = self._store.read()
        self._done = done.copy()
        scores = self._store.scores() if scored else None
        out = {}
        for slot in self.busy():
            first = self._read[slot]
            new = history[slot, first : pos[slot]].tolist()
            self._read[slot] = int(pos[slot])
            if stops[slot] >= 0 and stops[slot] in new:
                new = new[: new.index(stops[slot])]
                self._stopped.add(slot)
            out[slot] = new
            if slot in self._scored:
                self._scores[slot] = read_scores(scores, slot, first, len(new))
        return out

    def scores(self, slot: int) -> list[TokenScore]:
        """For the tokens `step` returned last for `slot`, each one's `TokenScore` (an engine
        made with logprobs > 0, a row added with scores=True)."""
        if not self.logprobs:
            raise UserError("this engine keeps no log-probabilities; make it with logprobs=k")
        if slot in self._read and slot not in self._scored:
            raise UserError(f"slot {slot} keeps no log-probabilities; add its row with scores=True")
        return self._scores.get(slot, [])


def run_alone(
    lm, prompt_tokens, config: GenerationConfig, slots: int, engine=None, **add
) -> list[int]:
    """What one sequence gives alone in an engine of `slots` slots: the reference a row that
    joins a running batch must equal (tests, and a check anyone can run). engine: an idle
    `Engine(lm, slots)` to run it in, its compiled programs kept from one call to the next (the
    row's slot is freed at the end); default a new one."""
    engine = engine or Engine(lm, slots)
    if engine.busy() or engine.slots != slots or engine.lm is not lm:
        raise UserError(f"run_alone needs an idle engine of {slots} slots on this model")
    slot = engine.add(prompt_tokens, config, **add)
    try:
        out = []
        while slot not in engine.finished():
            out += engine.step(16)[slot]
        return out
    finally:
        engine.remove(slot)
