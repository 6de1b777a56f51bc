"""A decode engine: a fixed number of slots over one key/value cache, rows joining and leaving
a running batch between steps (continuous batching, as vLLM's scheduler and llama.cpp's server
slots do it).

Each slot is one sequence at its own position: its prompt is run (with those of the rows that
join at the same time, as one batch: `add_many`) and its cache rows copied into the slot; then
every `step` advances every busy slot by one token over fixed shapes [slots, ...] (on xla, one
compiled loop: `XlaSlots`; on tflite, the interpreter's step: `lite.LiteSlots`), each row with
its own settings (temperature, top-k, top-p, penalties, n-gram
size, key, stop token, length), so that nothing recompiles when a row joins. A row's tokens
depend on its own prompt, settings, key and step only: it draws the same tokens whenever it
joins and whoever else runs (tests/test_engine.py checks it against the row run alone).
Processors and strategies are the ones every loop shares (`processors`, `strategies`), given
per-row settings.

    engine = Engine(lm, slots=4)
    slot = engine.add(prompt_ids, GenerationConfig(length=20, top_k=40, seed=1))
    while engine.busy():
        for slot, tokens in engine.step(8).items(): ...  # new tokens per slot, as they come
        for slot in engine.finished(): engine.remove(slot)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.checks import check_token_ids, contexts_and_stop
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.logprobs import TokenScore, read_scores, token_scores
from gpt2_tf2.generation.loop import bucket
from gpt2_tf2.generation.processors import apply_processors
from gpt2_tf2.generation.settings import History, Settings
from gpt2_tf2.generation.strategies import choose_tokens


class Slots(NamedTuple):
    """The engine's state, one row per slot."""

    logits: tf.Tensor  # [slots, vocab]: the next token's logits
    cache: list  # the model's key/value cache, [slots * heads, cache_len, head_dim] per tensor
    history: tf.Tensor  # int32 [slots, cache_len]: prompt, then output
    pos: tf.Tensor  # int32 [slots]: tokens so far = the column of the next one
    step: tf.Tensor  # int32 [slots]: tokens generated so far (the sampler's step)
    limit: tf.Tensor  # int32 [slots]: tokens the row may generate
    done: tf.Tensor  # bool [slots]: finished, or free
    rows: tf.Tensor  # int32 [slots]: the row's number in its key's batch
    settings: Settings  # each field [slots] (the key [slots, 2])
    scores: tuple = ()  # with logprobs: `token_scores` of each column, [slots, cache_len, ...]


class Request(NamedTuple):
    """A sequence to start (`Engine.add_many`): its prompt, settings, the sampler's (seed,
    batch) key (default (config.seed or 0, 0)) and the row's number in that key's batch."""

    prompt_tokens: list
    config: GenerationConfig | None = None
    key: tuple | None = None
    row: int = 0


class Prefill(NamedTuple):
    """Rows whose prompts have run (`Engine.prefill`), ready to start (`Engine.start`)."""

    rows: list  # (prompt tokens, Settings, length) per row, checked
    row_numbers: list  # each row's number in its key's batch
    logits: tf.Tensor  # [k, vocab]: after each row's prompt
    cache: list  # [k * heads, cache_len, head_dim] per tensor


class Engine:
    """`slots` sequences decoded together on `lm`'s model (a `LanguageModel`, on either
    backend); `cache_len` (default the model's context) bounds prompt + length of each.
    logprobs: with k > 0, each token's log-probability and the k most likely tokens at its
    step are kept (`scores`). grow_cache (xla): the cache starts as wide as the rows need and
    widens as they grow (powers of two up to cache_len, each a compilation), and narrows
    again when the engine empties: every step attends over the columns in use, not cache_len
    (a server's engine, whose rows are mostly far shorter than the context). busy_rows (xla):
    each step runs the slots up to the last running one (rounded up to a power of two, at
    least two, each a compilation), not all of them: rows start in the lowest free slots, so
    a server's engine sized for its busiest hour pays for the rows it runs (one row on 16
    slots cost 3.4 rows' time a step, docs/benchmarks/serving.md)."""

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
            raise UserError(f"logprobs must be an integer from 0 to {lm.hparams.n_vocab}")
        self.logprobs = logprobs
        if lm.lite is not None:
            from gpt2_tf2.generation.lite import LiteSlots

            self._store = LiteSlots(lm, self.slots, self.cache_len, logprobs)
        else:
            self._store = XlaSlots(lm, self.slots, self.cache_len, logprobs, grow_cache, busy_rows)
        self._free = list(range(self.slots))
        self._read = {}  # slot -> tokens of its history already returned
        self._stopped = set()  # slots whose sequence ended on its stop token
        self._scores = {}  # slot -> TokenScores of the tokens `step` returned last
        self._done = None  # each slot's done flag as `step` last read it (None: read again)

    # ---- rows joining and leaving ---------------------------------------------------------

    def add(self, prompt_tokens, config: GenerationConfig | None = None, key=None, row: int = 0):
        """Start a sequence in a free slot (a UserError if none is free); returns the slot.

        config: its sampling settings, length (default: up to the cache) and stop_at_endoftext;
        key: the sampler's (seed, batch) key, default (config.seed or 0, 0); row: the row's
        number in that key's batch (`random.gumbel_noise`)."""
        return self.add_many([Request(prompt_tokens, config, key, row)])[0]

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
        return Prefill(rows, [int(r.row) for r in requests], logits, cache)

    def start(self, prefill: Prefill, keys=None) -> list[int]:
        """Start the rows of `prefill`, each in a free slot; returns their slots, in order.
        keys: the sampler's (seed, batch) key of each row instead of its request's."""
        rows = prefill.rows
        self._check_free(len(rows))
        slots = self._free[: len(rows)]
        settings = Settings.rows([s for _, s, _ in rows])
        if keys is not None:
            settings = settings._replace(seed=tf.constant(keys, tf.int64))
        self._store.start(slots, prefill, settings)
        self._done = None
        del self._free[: len(rows)]
        for slot, (tokens, _, _) in zip(slots, rows):
            self._read[slot] = len(tokens)
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
            raise UserError("the decode engine samples or decodes greedily; beams search apart")
        tokens = list(request.prompt_tokens or [])
        check_token_ids(tokens, self.lm.hparams.n_vocab)
        (tokens,), stop = contexts_and_stop(self.lm.encoder, [tokens], config.stop_at_endoftext)
        if config.length is None:  # half the cache, as a prompt gets half the context
            config = GenerationConfig.of(config, length=max(1, self.cache_len // 2))
        # Checked against the model's context (a window_stride is one of it), then the cache.
        length = config.validate(self.lm.hparams.n_ctx, len(tokens)).length
        if len(tokens) + length > self.cache_len:
            raise UserError(
                f"prompt ({len(tokens)} tokens) + length ({length}) exceeds the engine's "
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
        self._store.advance(n)
        history, pos, done, stops = self._store.read()
        self._done = done.copy()
        scores = self._store.scores() if self.logprobs else None
        out = {}
        for slot in self.busy():
            first = self._read[slot]
            new = history[slot, first : pos[slot]].tolist()
            self._read[slot] = int(pos[slot])
            if stops[slot] >= 0 and stops[slot] in new:
                new = new[: new.index(stops[slot])]
                self._stopped.add(slot)
            out[slot] = new
            if scores is not None:
                self._scores[slot] = read_scores(scores, slot, first, len(new))
        return out

    def scores(self, slot: int) -> list[TokenScore]:
        """For the tokens `step` returned last for `slot`, each one's `TokenScore` (an engine
        made with logprobs > 0)."""
        if not self.logprobs:
            raise UserError("this engine keeps no log-probabilities; make it with logprobs=k")
        return self._scores.get(slot, [])


class XlaSlots:
    """The engine's rows on the xla backend: `Slots` tensors, advanced by one compiled loop
    (`advance`), new rows written in by another (`insert`). The key/value cache lives in
    variables (`self.cache`), which the compiled programs update in place: as a tensor going
    in and out of each call, the whole cache was copied at every call (a function's input is
    never written in place), ~20-40 ms for 4 slots at 512 positions of the 124M shape, while a
    server steps a token or four a call.
    """

    def __init__(
        self,
        lm,
        slots,
        cache_len,
        logprobs: int = 0,
        grow_cache: bool = False,
        busy_rows: bool = False,
    ):
        self.lm, self.slots, self.cache_len, self.logprobs = lm, slots, cache_len, logprobs
        self.grow, self.busy_rows = grow_cache, busy_rows
        self.state = None  # Slots without their cache (`cache`), made when the first rows start
        self.cache = None  # per layer, (keys, values) variables [slots * heads, width, head_dim]
        self._advance, self._insert = programs(lm)
        # Host copies for choosing the cache's width: each slot's position, end, and whether
        # it runs (as of the last `read` or `start`).
        self._pos, self._end = np.zeros([slots], np.int64), np.zeros([slots], np.int64)
        self._done = np.ones([slots], bool)

    def _width(self, columns: int) -> int:
        """The cache's width for `columns` columns in use: cache_len, or with grow_cache a
        power of two from cache_len / 16 (at most five widths: each is a compilation)."""
        if not self.grow:
            return self.cache_len
        return bucket(columns, self.cache_len, smallest=max(16, self.cache_len // 16))

    def _cache_width(self) -> int:
        return _width_of(self.cache) if self.cache is not None else 0

    def _hold(self, cache) -> None:
        """New variables holding the cache tensors `cache` (a copy)."""
        self.cache = [tuple(tf.Variable(t, trainable=False) for t in layer) for layer in cache]

    def _widen_to(self, width: int) -> None:
        """The cache's variables `width` columns wide, their columns kept (a copy; rare: at
        most five widths)."""
        if self.cache is not None and self._cache_width() < width:
            self._hold(
                _widen([tuple(tf.convert_to_tensor(v) for v in c) for c in self.cache], width)
            )

    def reset(self) -> None:
        """Every slot free: a growing cache starts narrow again."""
        if self.grow:
            self.state, self.cache = None, None

    def prefill(self, prompts):
        """The prompts run as one batch: (logits after each one's last token [k, vocab], cache
        [k * heads, cache_len, head_dim] per tensor). Each is right-padded to the longest: a
        row's padding is written to the cache after its prompt, and each of those columns is
        overwritten by the row's own next token before any query can see it (a query sees the
        columns up to its own)."""
        width = bucket(max(len(t) for t in prompts), self.cache_len)
        context = tf.constant([t + [0] * (width - len(t)) for t in prompts], tf.int32)
        ends = tf.constant([len(t) for t in prompts], tf.int32)  # logits after each row's own
        cache_len = max(width, self._width(width + 1))
        return self.lm._prefill(context, ends, cache_len, None)

    def start(self, slots, prefill: Prefill, settings: Settings) -> None:
        """Write the rows of `prefill` into `slots`, with their `settings` ([k] each)."""
        prompts = [tokens for tokens, _, _ in prefill.rows]
        history = [t + [0] * (self.cache_len - len(t)) for t in prompts]
        pos = tf.constant([len(t) for t in prompts], tf.int32)
        limit = tf.constant([length for _, _, length in prefill.rows], tf.int32)
        row = tf.constant(prefill.row_numbers, tf.int32)
        history = tf.constant(history, tf.int32)
        for i, slot in enumerate(slots):
            self._pos[slot], self._done[slot] = len(prompts[i]), False
            self._end[slot] = len(prompts[i]) + prefill.rows[i][2]
        cache = prefill.cache
        width = max(_width_of(cache), self._cache_width())
        cache = _widen(cache, width)
        self._widen_to(width)
        if len(slots) == self.slots:  # every slot at once: the rows are the state, no insert
            zeros, done = tf.zeros([self.slots], tf.int32), tf.zeros([self.slots], tf.bool)
            self._hold(cache)
            self.state = Slots(
                prefill.logits,
                (),
                history,
                pos,
                zeros,
                limit,
                done,
                row,
                settings,
                self._no_scores(),
            )
            return
        row_state = (prefill.logits, cache, history, pos, limit, row)
        if self.state is None:
            self.state = self._empty()
            self._hold(self.lm.model.init_cache(self.slots, width))
        self.state = self._insert(self.state, self.cache, tf.constant(slots), row_state, settings)

    def _empty(self) -> Slots:
        """The state of an engine with every slot free (its cache apart)."""
        hp, slots = self.lm.hparams, self.slots
        return Slots(
            logits=tf.zeros([slots, hp.n_vocab]),
            cache=(),
            history=tf.zeros([slots, self.cache_len], tf.int32),
            pos=tf.zeros([slots], tf.int32),
            step=tf.zeros([slots], tf.int32),
            limit=tf.zeros([slots], tf.int32),
            done=tf.ones([slots], tf.bool),
            rows=tf.zeros([slots], tf.int32),
            # A free slot decodes greedily: it never asks for a sampling path (its tokens are
            # thrown away).
            settings=Settings.rows([Settings.make(temperature=0.0)] * slots),
            scores=self._no_scores(),
        )

    def _no_scores(self) -> tuple:
        """The scores' arrays before any token ((), without logprobs)."""
        if not self.logprobs:
            return ()
        shape = [self.slots, self.cache_len]
        k = [self.logprobs]
        return tf.zeros(shape), tf.zeros(shape + k, tf.int32), tf.zeros(shape + k)

    def scores(self):
        """The scores' arrays (chosen log-probability, top ids, top log-probabilities) as NumPy."""
        return tuple(a.numpy() for a in self.state.scores)

    def cancel(self, slot: int) -> None:
        done = tf.tensor_scatter_nd_update(self.state.done, [[slot]], [True])
        self.state = self.state._replace(done=done)
        self._done[slot] = True

    def advance(self, n: int) -> None:
        """Up to n more tokens for every unfinished row."""
        if self.state is not None and not all(self.state.done.numpy()):
            running = ~self._done
            if self.grow:  # the columns the running rows reach in n steps (not past their end)
                reach = np.minimum(self._pos + n, self._end)[running]
                width = self._width(int(reach.max())) if running.any() else 0
                self._widen_to(width)
            self.state = self._advance(self.state, self.cache, tf.constant(n), self._rows(running))

    def _rows(self, running) -> int:
        """How many slots a step runs, from the first: all, or with busy_rows the power of two
        that reaches the last running one (a Python int: one compilation per count), at least
        two: a batch of one takes a matrix-vector kernel whose rounding differs from the
        batched product's in the last digit (batches of 2 to 16 gave a row the same logits to
        the bit, 1 did not), which would make a row's tokens depend on who else runs."""
        if not self.busy_rows or not running.any():
            return self.slots
        last = int(np.flatnonzero(running)[-1])
        return min(self.slots, max(2, 1 << last.bit_length()))

    def read(self):
        """(history [slots, cache_len], pos, done, stop token per slot), as NumPy arrays."""
        if self.state is None:
            empty = np.zeros([self.slots], np.int32)
            return None, empty, np.ones([self.slots], bool), empty - 1
        state = self.state
        pos, done = state.pos.numpy(), state.done.numpy()
        self._pos[:], self._done[:] = pos, done
        return state.history.numpy(), pos, done, state.settings.stop_token.numpy()


def _width_of(cache) -> int:
    return int(cache[0][0].shape[1])


def _widen(cache, width: int) -> list:
    """The cache with zero columns added up to `width` (a copy; the same cache if as wide)."""
    extra = width - _width_of(cache)
    if extra <= 0:
        return cache
    pad = [[0, 0], [0, extra], [0, 0]]
    return [tuple(tf.pad(t, pad) for t in layer) for layer in cache]


def programs(lm):
    """The engine's compiled functions for `lm`, made once and kept on it: engines of any size
    on one model share them (one trace and compilation per shape, not per engine)."""
    if lm._engine_programs is None:
        lm._engine_programs = (
            tf.function(functools.partial(advance, lm), jit_compile=lm.xla, autograph=False),
            tf.function(
                functools.partial(insert, lm.hparams.n_head), jit_compile=lm.xla, autograph=False
            ),
        )
    return lm._engine_programs


def insert(n_head: int, state: Slots, cache_vars, slots, row_state, settings) -> Slots:
    """`state` with `slots` (int32 [k]) holding k new rows: their logits after the prompt, cache
    rows (row i's heads at i * heads .., written into the variables `cache_vars` in place),
    history, position, length, row number and settings, each [k, ...] (`Engine.add_many`)."""
    logits, cache, history, pos, limit, row = row_state
    h = n_head
    k = tf.shape(slots)[0]

    def put(field, value):
        return tf.tensor_scatter_nd_update(field, slots[:, None], value)

    cache_rows = tf.reshape(slots[:, None] * h + tf.range(h)[None, :], [-1, 1])  # [k * heads, 1]
    for layer, new_layer in zip(cache_vars, cache):
        for var, new in zip(layer, new_layer):
            var.assign(tf.tensor_scatter_nd_update(var, cache_rows, new))
    return Slots(
        logits=put(state.logits, logits),
        cache=(),
        history=put(state.history, history),
        pos=put(state.pos, pos),
        step=put(state.step, tf.zeros([k], tf.int32)),
        limit=put(state.limit, limit),
        done=put(state.done, tf.zeros([k], tf.bool)),
        rows=put(state.rows, row),
        settings=Settings(*(put(f, v) for f, v in zip(state.settings, settings))),
        scores=state.scores,  # a new row's columns are written as its tokens are chosen
    )


def advance(lm, state: Slots, cache_vars, n, rows: int) -> Slots:
    """Up to `n` more tokens for every unfinished row among the first `rows` slots (the others
    finished or free: `XlaSlots._rows`), in one loop; their cache read from the variables
    `cache_vars` and written back to them (in place under XLA, a slice as cheaply as all)."""
    weights = lm.model.read_weights(lm._cpu_matvec)
    model = functools.partial(lm.model, weights=weights)
    whole, part = state, rows < state.pos.shape[0]
    if part:
        state = tf.nest.map_structure(lambda t: t[:rows], state)
    heads = rows * lm.hparams.n_head  # a slot's rows of the cache: its heads
    cache = [tuple(tf.convert_to_tensor(v)[:heads] for v in layer) for layer in cache_vars]
    state = state._replace(cache=cache)
    cache_len = state.history.shape[1]
    columns = tf.range(cache_len)
    last = min(cache_len, _width_of(state.cache)) - 1  # a growing cache may be narrower

    def cond(i, state):
        return (i < n) & ~tf.reduce_all(state.done)

    def body(i, state):
        s = state.settings
        logits = apply_processors(
            state.logits, s, History(state.history, state.pos, 0, state.pos - state.step)
        )
        chosen = choose_tokens(logits, s, state.step, rows=state.rows)
        active = ~state.done
        token = tf.where(active, chosen, tf.maximum(s.stop_token, 0))
        at = tf.minimum(state.pos, last)  # a finished row's position may be past the end
        write = active[:, None] & (columns[None, :] == at[:, None])
        history = tf.where(write, token[:, None], state.history)
        step = state.step + tf.cast(active, tf.int32)
        done = state.done | (token == s.stop_token) | (step >= state.limit)
        scores = state.scores
        if scores:  # the model's log-probabilities, written where the token is
            fresh = token_scores(state.logits, token, scores[1].shape[-1])
            scores = tuple(
                tf.where(tf.reshape(write, write.shape + [1] * (old.shape.rank - 2)), f, old)
                for old, f in zip(scores, (fresh[0][:, None], fresh[1][:, None], fresh[2][:, None]))
            )

        def forward():
            out = model(token[:, None], state.cache, at, logits_at=0)
            return out["logits"][:, -1], out["cache"]

        logits, cache = tf.cond(tf.reduce_all(done), lambda: (state.logits, state.cache), forward)
        pos = state.pos + tf.cast(active, tf.int32)
        new = state._replace(
            logits=logits,
            cache=cache,
            history=history,
            pos=pos,
            step=step,
            done=done,
            scores=scores,
        )
        return i + 1, new

    _, state = tf.while_loop(cond, body, (tf.constant(0), state))
    for layer, new_layer in zip(cache_vars, state.cache):
        for var, new in zip(layer, new_layer):
            var[:heads].assign(new) if part else var.assign(new)
    state = state._replace(cache=())
    if part:  # the slots past `rows` as they were
        state = tf.nest.map_structure(lambda t, old: tf.concat([t, old[rows:]], 0), state, whole)
    return state


def run_alone(lm, prompt_tokens, config: GenerationConfig, slots: int, **add) -> list[int]:
    """What one sequence gives alone in an engine of `slots` slots: the reference a row that
    joins a running batch must equal (tests, and a check anyone can run)."""
    engine = Engine(lm, slots)
    slot = engine.add(prompt_tokens, config, **add)
    out = []
    while slot not in engine.finished():
        out += engine.step(16)[slot]
    return out
