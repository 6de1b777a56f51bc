"""The compiled programs of decoding, shared by every model of one shape in the process.

Each takes the model's variables as its first argument (`GPT2.decoding_variables`) instead of
capturing them: tf.function traces a variable argument by its shape and dtype, so a second
model of the same shape (the same files loaded again, a fine-tuned copy, another run of the
same size) calls the programs traced and compiled for the first, and a new load starts in
milliseconds instead of seconds (measured on the tiny test model: 4.1 s for `sample` in a
process that had sampled from another load already, of which tracing 1.9 s and compiling
2.1-2.3 s). The programs hold no weights: `core.model.Decoder` is the forward pass without
them.

- `prefill`: the prompt, in a plain graph (compiling it cost ~1 s more on a first call than
  it saved).
- `advance`, `insert`: the decode engine's step loop and its writing of new rows
  (`generation.engine`), XLA-compiled unless xla=False.
- `beam`: beam search's steps (`generation.beam`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import tensorflow as tf

from gpt2_tf2.core.model import Decoder, read_weights
from gpt2_tf2.generation import beam, loop


class Programs(NamedTuple):
    prefill: Callable  # (variables, context, prompt_len, cache_len, offsets) -> (logits, cache)
    advance: Callable  # (variables, state: engine.Slots, n) -> Slots
    insert: Callable  # (state, slots, row_state, settings) -> Slots
    beam: Callable  # (variables, state, prompt_len, length, settings, until, options) -> state


@functools.cache
def programs(decoder: Decoder, xla: bool, cpu_matvec: bool) -> Programs:
    """The programs of models decoded by `decoder` (one per shape and compute dtype), compiled
    by XLA or not (`xla`), with the CPU's matrix-vector kernels or not (`kernels.cpu_only`,
    decided on the machine that runs them)."""
    from gpt2_tf2.generation import engine  # engine builds on this module

    def model(variables, matvec=cpu_matvec):
        return decoder.bind(read_weights(variables, matvec))

    def prefill(variables, context, prompt_len, cache_len, offsets):
        return loop.prefill(model(variables, False), context, prompt_len, cache_len, offsets)

    def advance(variables, state, n):
        return engine.advance(model(variables), state, n)

    def insert(state, slots, row_state, settings):
        return engine.insert(decoder.hparams.n_head, state, slots, row_state, settings)

    def beam_advance(variables, state, prompt_len, length, settings, until, options):
        return beam.advance(model(variables), state, prompt_len, length, settings, until, options)

    compiled = functools.partial(tf.function, jit_compile=xla, autograph=False)
    return Programs(
        prefill=tf.function(prefill, autograph=False, reduce_retracing=False),
        advance=compiled(advance),
        insert=compiled(insert),
        beam=compiled(beam_advance, reduce_retracing=False),
    )
