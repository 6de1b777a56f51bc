"""Beam search behind the decode engine's interface (`engine.Engine`): `add` a prompt, `step` the
search, `finished`, its best hypotheses (`results`), `remove` it (ended or cancelled), on the xla
and tflite backends alike.

The search is `beam.py`'s (transformers' vectorized beam search): each step, `beam.choose` keeps
the best beams and the model reads their new tokens with its cache rows reordered to follow
them. Only where the model and its cache live differs by backend: on xla both run in one
compiled loop (`beam.advance`, the `LanguageModel`'s program); on tflite the cache is in the
interpreter's input buffers, reordered in NumPy, and `beam.choose` runs compiled between the
interpreter's steps. A search's K beams reorder themselves every step, so they are not rows of
the sampling engine, whose rows are independent: a `BeamSearch` holds one search (one slot).
Beams cannot stream: `step` gives a slot's best hypothesis when its search ends.

    search = BeamSearch(lm)
    slot = search.add(prompt_ids, GenerationConfig(num_beams=4, length=20))
    while slot not in search.finished():
        search.step(16)  # a progress bar, or a cancellation, between pieces
    best = search.results(slot)  # num_return_sequences lists of ids, best first
    search.remove(slot)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation import beam, texts
from gpt2_tf2.generation.checks import check_token_ids
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.loop import bucket
from gpt2_tf2.generation.settings import Settings

PIECE = 16  # steps of a search between progress reports or checks for a cancel (same beams)


class _Search(NamedTuple):
    state: beam.BeamState
    prompt_len: tf.Tensor  # int32 scalar
    length: tf.Tensor  # int32 scalar: the most tokens to generate
    settings: Settings
    options: tuple  # (n_head, length_penalty, early_stopping), as beam.advance takes them
    slots: int  # the width of the hypotheses (length, rounded up: one program for several)
    stop: int  # the stop token (-1: none)
    config: GenerationConfig


class BeamSearch:
    """One beam search at a time on `lm` (a `LanguageModel` on either backend), in pieces."""

    slots = 1

    def __init__(self, lm):
        self.lm = lm
        self._store = LiteBeams(lm) if lm.lite is not None else XlaBeams(lm)
        self._search = None  # the search in the slot, if any
        self._going = False

    def add(self, prompt_tokens=None, config: GenerationConfig | None = None, stop_token=None):
        """Start a search of `prompt_tokens` (None or []: after <|endoftext|>) with `config`'s
        num_beams, length, length_penalty, early_stopping, num_return_sequences and repetition
        settings; a hypothesis ends at `stop_token` (default the vocabulary's <|endoftext|>, -1:
        only at the length). Returns its slot; a UserError if one is running."""
        if self._search is not None:
            raise UserError("a beam search holds one search at a time; remove the last first")
        hp, eot = self.lm.hparams, self.lm.encoder.eot_token
        config = GenerationConfig.of(config)
        prompt = list(prompt_tokens or [])
        check_token_ids(prompt, hp.n_vocab)
        config = config.validate(hp.n_ctx, len(prompt))
        if not prompt and eot is None:
            raise UserError("beam search without a prompt needs <|endoftext|> in the vocabulary")
        context = prompt or [eot]
        stop = stop_token if stop_token is not None else (-1 if eot is None else eot)
        slots = bucket(config.length, hp.n_ctx)
        settings = Settings.make(config, stop_token=stop)
        # The hypotheses' context padded to the prompt's bucket, one row per beam: one program
        # (xla's prefill and loop, tflite's `choose`) for prompts of several lengths.
        padded = context + [0] * (bucket(len(context), hp.n_ctx) - len(context))
        context_t = tf.constant([padded] * config.num_beams, tf.int32)
        prompt_len = tf.constant(len(context))
        state = self._store.start(context, context_t, prompt_len, slots, settings)
        self._search = _Search(
            state,
            prompt_len,
            tf.constant(config.length),
            settings,
            (hp.n_head, float(config.length_penalty), config.early_stopping),
            slots,
            stop,
            config,
        )
        self._going = True
        return 0

    def busy(self) -> list[int]:
        return [] if self._search is None else [0]

    def finished(self) -> list[int]:
        """The slot, once its search has ended (the length, or no better hypothesis to find)."""
        return [0] if self._search is not None and not self._going else []

    def config(self, slot: int) -> GenerationConfig:
        """The settings of the search in `slot`, validated (its length resolved)."""
        return self._busy(slot).config

    def steps(self, slot: int) -> int:
        """The steps the search in `slot` has taken (each adds one token to every beam)."""
        return int(self._busy(slot).state.step)

    def step(self, n: int = 1) -> dict[int, list[int]]:
        """Up to `n` more steps of the search; {slot: its best hypothesis} at the step it ends
        (given once, as the engine gives each token once), else {slot: []} (beams are known at
        the end); {} with no search."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"step takes a positive number of steps, got {n!r}")
        s = self._search
        if s is None:
            return {}
        if not self._going:
            return {0: []}
        until = tf.constant(min(int(s.state.step) + n, s.config.length))
        state, self._going = self._store.advance(s, until)
        self._search = s._replace(state=state)
        return {0: self.results(0)[0] if not self._going else []}

    def results(self, slot: int) -> list[list[int]]:
        """The num_return_sequences best hypotheses so far, best first (continuations, the
        stop token not included): the search's answer once it has ended."""
        s = self._busy(slot)
        out, _ = beam.result(s.state, s.prompt_len, s.slots)
        best = out.numpy()[0, : s.config.num_return_sequences, : s.config.length]
        return [texts.cut(row, s.stop) for row in best]

    def remove(self, slot: int) -> None:
        """Free the slot (ended, or cancelled: the search stops where it is)."""
        self._busy(slot)
        self._store.close()
        self._search, self._going = None, False

    def _busy(self, slot: int) -> _Search:
        if slot != 0 or self._search is None:
            raise UserError(f"slot {slot} is not busy")
        return self._search


class XlaBeams:
    """A search on xla: the prompt through the model's prefill, the steps in the model's
    compiled beam loop (`LanguageModel._beam`), the cache in the loop's state."""

    def __init__(self, lm):
        self.lm = lm

    def start(self, context, context_t, prompt_len, slots: int, settings) -> beam.BeamState:
        """The search's first state: `context` (ids) padded in `context_t` [K, bucket]."""
        k, width = context_t.shape
        cache_len = min(width + slots, self.lm.hparams.n_ctx)
        logits, cache = self.lm._prefill(context_t, prompt_len, cache_len, None)
        return beam.start(logits, cache, context_t, prompt_len, settings, slots, k)

    def advance(self, s: _Search, until) -> tuple[beam.BeamState, bool]:
        """(the state after the steps up to `until`, whether the search goes on)."""
        state = self.lm._beam(s.state, s.prompt_len, s.length, s.settings, until, s.options)
        return state, bool(beam.going(state, s.length, s.options[2]))

    def close(self) -> None:
        """Nothing held outside the state."""


class LiteBeams:
    """A search on tflite: the K beams' cache in the interpreter's input buffers (kept aside
    while another engine or a prompt uses them: `evict`), each step `beam.choose` compiled
    (`LiteDecoder.choose_beams`), the cache's rows reordered, then the interpreter's step."""

    def __init__(self, lm):
        self.lm, self.step = lm, lm.lite.step
        self.batch = self.cache_len = 0
        self._saved = None  # the cache while another holds the interpreter
        self._running = False
        self._written = 0  # the cache's columns written: the prompt's, then one per step

    def start(self, context, context_t, prompt_len, slots: int, settings) -> beam.BeamState:
        """The search's first state: `context` (ids) padded in `context_t` [K, bucket]."""
        n, k = len(context), context_t.shape[0]
        # One row of the prompt (the K beams start equal), its columns repeated for each beam.
        logits, columns = self.step.prompt(np.array([context], np.int32), np.zeros([1]), [n - 1])
        self.batch, self.cache_len = k, min(n + slots, self.lm.hparams.n_ctx)
        self.step.start([np.tile(c, (k, 1, 1)) for c in columns], self.cache_len)
        self.step.take(self)
        self._running, self._saved, self._written = True, None, n
        logits = tf.constant(np.repeat(logits[:, 0], k, axis=0))
        return beam.start(logits, [], context_t, prompt_len, settings, slots, k)

    def advance(self, s: _Search, until) -> tuple[beam.BeamState, bool]:
        """(the state after the steps up to `until`, whether the search goes on)."""
        self.step.claim(self, self.batch, self.cache_len, self._saved)
        self._saved = None
        state, length = s.state, int(s.length)
        going, until = bool(beam.going(state, s.length, s.options[2])), int(until)
        offsets = np.zeros([self.batch], np.int32)
        while going and int(state.step) < until:
            args = (state, s.prompt_len, s.length, s.settings, s.options)
            state, rows, tokens, going = self.lm.lite.choose_beams(*args)
            going, done = bool(going), int(state.step)
            cur = int(s.prompt_len) + done - 1  # the column of the new tokens
            self._reorder(rows.numpy().reshape(-1), cur)
            if done < length:
                logits = self.step.next(tokens.numpy().reshape(-1), cur, offsets)
                state = state._replace(logits=tf.constant(logits))
                self._written = cur + 1
        return state, going

    def _reorder(self, rows, columns: int) -> None:
        """The cache's rows follow their beams (rows [K]: the old row of each), in the first
        `columns` columns (those written). The buffers' views are dropped on return: the
        interpreter refuses to run while one is held."""
        if (rows == np.arange(self.batch)).all():
            return
        heads = self.lm.hparams.n_head
        for part, index in self.step._past:
            past = part.interpreter.tensor(index)()  # [K * heads, T, head_dim]
            view = past.reshape(self.batch, heads, *past.shape[1:])
            view[:, :, :columns] = view[rows, :, :columns]  # a copy on the right: safe

    def evict(self) -> None:
        """Another takes the interpreter: keep the cache, if the search still runs."""
        if self._running:
            self._saved = self.step.save(self._written)

    def close(self) -> None:
        self._running, self._saved = False, None
        if self.step.owner is self:
            self.step.take(None)
