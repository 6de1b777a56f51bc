"""The token a decode engine's rows choose at each step: the logits processors, then the
strategy, each row with its own settings (`xla.advance` and `tflite.LiteSlots` run it alike).

Traced once per process, not once per program that calls it: it is a pure function of its
tensors (no model, no variables) and most of the engine's step in operations (the processors,
the noise, the whole-row search of top-k/top-p). Each step program (a model, a number of
rows, a cache width) calls the one trace of its vocabulary and dtypes, and XLA compiles it
into each program as before. Measured on a 2-core CPU without AVX-512, the tiny test model:
a step program after the first traced in 0.34-0.8 s instead of 1.2-1.8 s; the tokens, the
first call's compilation and the steps' speed as before (docs/test-tiers.md, round
twenty-four).
"""

from __future__ import annotations

import threading

import tensorflow as tf

from gpt2_tf2.core.kernels import in_xla
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import apply_processors
from gpt2_tf2.generation.strategies import choose_tokens

_lock = threading.Lock()
_traced = {}  # (compiled by XLA, the arguments' specs) -> tf.function


def choose_rows(logits, history, pos, settings, step, rows):
    """One token per row (int32 [rows]) from its logits [rows, vocab], its tokens so far
    (history [rows, T], pos [rows]: the column of the next), its `Settings` ([rows] each), its
    step (tokens generated so far) and its row number in its key's batch."""
    logits = apply_processors(logits, settings, History(history, pos, 0, pos - step))
    return choose_tokens(logits, settings, step, rows=rows)


def _any_rows(t):
    """t's spec with any number of rows."""
    return tf.TensorSpec([None, *t.shape[1:]], t.dtype)


def shared_choose_rows(logits, history, pos, settings, step, rows):
    """`choose_rows`, called from inside a traced function through the process's one trace
    for these dtypes and this vocabulary (traced apart for XLA: `kernels.in_xla` decides
    spellings)."""
    args = (logits, history, pos, settings, step, rows)
    specs = tf.nest.map_structure(_any_rows, args)
    specs = (specs[0], tf.TensorSpec([None, None], history.dtype), *specs[2:])  # any width
    key = (in_xla(), specs)
    with _lock:
        if key not in _traced:
            _traced[key] = tf.function(choose_rows, input_signature=specs, autograph=False)
        traced = _traced[key]
    chosen = traced(*args)
    chosen.set_shape(logits.shape[:1])  # the caller's rows, as its loop's state has them
    return chosen
