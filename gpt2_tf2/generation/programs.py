"""The compiled programs of decoding, shared by every model of one shape in the process.

The programs that cost seconds to trace and compile (the prompt's prefill, the decode engine's
step loop and its writing of new rows, beam search's steps) are made once per model shape,
compute dtype and backend (`shared`), and take the model's weights as tensors: a second model
of the same shape (the same files loaded again, a fine-tuned copy, another run of that size)
calls the programs traced and compiled for the first (measured on the tiny test model: 4.9 s
for a first sample after loading the model again, 0.02 s with them shared). `core.model.Decoder`
is the forward pass without weights of its own.

Each model calls them through its own small functions (`programs`) that capture its variables,
read them (`core.model.read_weights`) and pass the tensors on: a tf.function called with the
~150 variables of a 124M model as arguments costs ~4 ms a call in Python (their trace types are
computed at every call) against ~0.6 ms when it captures them, and the server steps the engine
every few tokens.

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

from gpt2_tf2.core.model import GPT2, Decoder
from gpt2_tf2.generation import beam, loop


class Programs(NamedTuple):
    prefill: Callable  # (weights or -, context, prompt_len, cache_len, offsets) -> (logits, cache)
    advance: Callable  # (weights or -, state: engine.Slots, n) -> Slots
    insert: Callable  # (state, slots, row_state, settings) -> Slots
    beam: Callable  # (weights or -, state, prompt_len, length, settings, until, options) -> state


@functools.cache
def shared(decoder: Decoder, xla: bool) -> Programs:
    """The programs of every model `decoder` runs (one per shape and compute dtype), compiled
    by XLA or not (`xla`), each taking the weights (`read_weights`) first."""
    from gpt2_tf2.generation import engine  # engine builds on this module

    def prefill(weights, context, prompt_len, cache_len, offsets):
        return loop.prefill(decoder.bind(weights), context, prompt_len, cache_len, offsets)

    def advance(weights, state, n):
        return engine.advance(decoder.bind(weights), state, n)

    def insert(state, slots, row_state, settings):
        return engine.insert(decoder.hparams.n_head, state, slots, row_state, settings)

    def beam_advance(weights, state, prompt_len, length, settings, until, options):
        model = decoder.bind(weights)
        return beam.advance(model, state, prompt_len, length, settings, until, options)

    compiled = functools.partial(tf.function, jit_compile=xla, autograph=False)
    return Programs(
        prefill=tf.function(prefill, autograph=False, reduce_retracing=False),
        advance=compiled(advance),
        insert=compiled(insert),
        beam=compiled(beam_advance, reduce_retracing=False),
    )


def programs(model: GPT2, xla: bool, cpu_matvec: bool) -> Programs:
    """`model`'s programs, without the weights argument: plain-graph functions that read its
    variables and call the `shared` ones (tracing one costs milliseconds; the shared program
    behind it is traced and compiled once per shape). `cpu_matvec`: the CPU's matrix-vector
    kernels in the steps (`kernels.cpu_only`, decided on the machine that runs them); the
    prompt's prefill never uses them."""
    run = shared(model.decoder, xla)

    def own(function, matvec=cpu_matvec, **options):
        def call(*args):
            return function(model.read_weights(matvec), *args)

        return tf.function(call, autograph=False, **options)

    return Programs(
        prefill=own(run.prefill, False, reduce_retracing=False),
        advance=own(run.advance),
        insert=run.insert,
        beam=own(run.beam, reduce_retracing=False),
    )
