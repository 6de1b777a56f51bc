"""The decode engine's rows on the xla backend (`engine.Engine`'s store, as `lite.LiteSlots` is
on tflite): the rows' state as tensors, advanced by one compiled loop (`advance`), new rows
written in by another (`insert`), the key/value cache in variables both update in place.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.model import dense
from gpt2_tf2.generation.choice import shared_choose_rows
from gpt2_tf2.generation.logprobs import token_scores
from gpt2_tf2.generation.loop import bucket
from gpt2_tf2.generation.settings import Settings


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
        # With busy_rows, the fewest rows a step runs (`_rows`): from there up, a row's
        # products are the same to the bit whatever the step's size (`exact_from`).
        self.fewest = exact_from(model_products(lm), step_sizes(slots)) if busy_rows else slots
        self.state = None  # Slots without their cache (`cache`), made when the first rows start
        self.cache = None  # per layer, (keys, values) variables [slots * heads, width, head_dim]
        self._advance, self._insert = programs(lm)
        self._steps = {}  # (rows, cache width): `_advance`'s concrete function (`_step_program`)
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

    def start(self, slots, prefill, settings: Settings) -> None:
        """Write the rows of `prefill` (an `engine.Prefill`) into `slots`, with their `settings`
        ([k] each)."""
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

    def advance(self, n: int, scores: bool = True) -> None:
        """Up to n more tokens for every unfinished row; scores: their scores too (with
        logprobs; a flag of the loop, not a second program)."""
        if self.state is not None and not all(self.state.done.numpy()):
            running = ~self._done
            if self.grow:  # the columns the running rows reach in n steps (not past their end)
                reach = np.minimum(self._pos + n, self._end)[running]
                width = self._width(int(reach.max())) if running.any() else 0
                self._widen_to(width)
            rows = self._rows(running)
            program = self._step_program(rows)
            self.state = program(self.state, self.cache, tf.constant(n), rows, tf.constant(scores))

    def _step_program(self, rows: int):
        """`_advance` for `rows` rows at the cache's width, as its concrete function: a server
        calls it for a token or four at a time, and a tf.function's call works out the trace
        types of its ~60 arguments every time (3 ms a call here; the concrete function 1.5 ms).
        Everything else in its signature is fixed for the engine (slots, cache_len, logprobs)."""
        key = (rows, self._cache_width())
        if key not in self._steps:
            args = (self.state, self.cache, tf.constant(0), rows, tf.constant(True))
            self._steps[key] = self._advance.get_concrete_function(*args)
        return self._steps[key]

    def _rows(self, running) -> int:
        """How many slots a step runs, from the first: all, or with busy_rows the power of two
        that reaches the last running one (a Python int: one compilation per count), at least
        `self.fewest`: a row's tokens must not depend on who else runs, and a CPU's product
        kernels may round a row differently in batches of different sizes (`exact_from`)."""
        if not self.busy_rows or not running.any():
            return self.slots
        last = int(np.flatnonzero(running)[-1])
        return min(self.slots, max(self.fewest, 1 << last.bit_length()))

    def read(self):
        """(history [slots, cache_len], pos, done, stop token per slot), as NumPy arrays."""
        if self.state is None:
            empty = np.zeros([self.slots], np.int32)
            return None, empty, np.ones([self.slots], bool), empty - 1
        state = self.state
        pos, done = state.pos.numpy(), state.done.numpy()
        self._pos[:], self._done[:] = pos, done
        return state.history.numpy(), pos, done, np.asarray(state.settings.stop_token)


def step_sizes(slots: int) -> list[int]:
    """The numbers of rows a busy-rows step may run on `slots` slots (`XlaSlots._rows`): the
    powers of two from 2 below `slots`, and `slots`."""
    return sorted({1 << k for k in range(1, slots.bit_length()) if 1 << k < slots} | {slots})


def exact_from(products, sizes: list[int]) -> int:
    """The fewest of `sizes` (ascending) from which every larger one gives the first rows the
    same products to the bit: `products(m)` returns arrays whose leading dimension is m rows.
    The largest size always qualifies (then every step runs every slot).

    Whether it does is the CPU kernels' choice, not this package's: measured for the 124M
    shape's products compiled by XLA, TensorFlow 2.21 gave a row the same bits at 2 to 16 rows
    (1 and 32 differed), TensorFlow 2.17 on a CPU without AVX-512 only at 8 and 16 (on one
    with AVX-512, at 2 to 16); with the weights transposed as `gpt2_tf2.load` keeps them,
    2.21 on a CPU without AVX-512 at 2 to 32."""
    first = sizes[0]
    results = [[np.asarray(a)[:first] for a in products(m)] for m in sizes]
    i = len(sizes) - 1
    while i > 0 and all((a == b).all() for a, b in zip(results[i - 1], results[-1])):
        i -= 1
    return sizes[i]


def model_products(lm):
    """`products(m)` for `exact_from`: the first block's attention input layer and the output
    layer on m random rows, compiled as the engine's step is and from the same weights."""
    weights = lm.model.read_weights(lm._cpu_matvec)
    block = weights["h"][0]
    head = lm.model._output_weights(weights["wte"], weights)
    rows = tf.random.stateless_normal([64, lm.hparams.n_embd], [0, 0], dtype=lm.model.compute_dtype)

    def products(x):
        qkv = dense(x, block, "attn/c_attn", lm._cpu_matvec)
        return qkv, tf.matmul(x, tf.cast(head, x.dtype), transpose_b=True)

    # Traced once for any number of rows (a trace per size would make TensorFlow warn of
    # retracing); XLA still compiles each size apart, with the shapes the step has.
    spec = tf.TensorSpec([None, lm.hparams.n_embd], rows.dtype)
    run = tf.function(products, input_signature=[spec], jit_compile=lm.xla, autograph=False)

    def of(m: int):
        return [t.numpy() for t in run(tf.tile(rows, [m // 64 + 1, 1])[:m])]

    return of


def _width_of(cache) -> int:
    return int(cache[0][0].shape[1])


def _widen(cache, width: int) -> list:
    """The cache with zero columns added up to `width` (a copy; the same cache if as wide)."""
    extra = width - _width_of(cache)
    if extra <= 0:
        return cache
    pad = [[0, 0], [0, extra], [0, 0]]
    return [tuple(tf.pad(t, pad) for t in layer) for layer in cache]


def _scores_at(logits, token, write, scores) -> tuple:
    """The scores' arrays with each row's `token_scores` written where `write` is set."""
    fresh = token_scores(logits, token, scores[1].shape[-1])
    return tuple(
        tf.where(tf.reshape(write, write.shape + [1] * (old.shape.rank - 2)), f[:, None], old)
        for old, f in zip(scores, fresh)
    )


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


def advance(lm, state: Slots, cache_vars, n, rows: int, scored) -> Slots:
    """Up to `n` more tokens for every unfinished row among the first `rows` slots (the others
    finished or free: `XlaSlots._rows`), in one loop; their cache read from the variables
    `cache_vars` and written back to them (in place under XLA, a slice as cheaply as all).
    scored (bool scalar): write the tokens' scores (with logprobs), else leave them."""
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
        chosen = shared_choose_rows(
            state.logits, state.history, state.pos, s, state.step, state.rows
        )
        active = ~state.done
        token = tf.where(active, chosen, tf.maximum(s.stop_token, 0))
        at = tf.minimum(state.pos, last)  # a finished row's position may be past the end
        write = active[:, None] & (columns[None, :] == at[:, None])
        history = tf.where(write, token[:, None], state.history)
        step = state.step + tf.cast(active, tf.int32)
        done = state.done | (token == s.stop_token) | (step >= state.limit)
        scores = state.scores
        if scores:  # the model's log-probabilities, written where the token is
            scores = tf.cond(
                scored, lambda: _scores_at(state.logits, token, write, scores), lambda: scores
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
