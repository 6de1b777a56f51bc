"""The decode loop: run the prompt once (`prefill`), then one compiled `tf.while_loop` over a
fixed-shape key/value cache (`continue_decode`) that calls the processors and the strategy.

Every shape depends only on the cache's shape and `slots`, never on the prompt's or the
generation's actual length, so one XLA compilation serves every prompt and length that fit (the
caller rounds both up to a few bucket sizes). The loop keeps the token history (prompt, then
output) for processors to read, and writes the model's cache layout (`core.model.write_cache`).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from gpt2_tf2.core.kernels import shape_list
from gpt2_tf2.generation.checks import bucket  # noqa: F401 (loop.bucket: its public name)
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import PROCESSORS, apply_processors
from gpt2_tf2.generation.strategies import choose_tokens


class LoopState(NamedTuple):
    step: tf.Tensor  # int32 scalar: tokens chosen so far
    logits: tf.Tensor  # [batch, vocab]: the model's logits for the next token
    cache: list  # the model's key/value cache
    history: tf.Tensor  # int32 [batch, P + slots]: prompt in [0, prompt_len), then the output
    done: tf.Tensor  # bool [batch]: the row emitted the stop token
    start: tf.Tensor  # int32 [batch]: the row's first column (a mixed-length batch is left-padded)


def prefill(model, context, prompt_len, cache_len: int, offsets=None):
    """Run the prompt through `model`: (logits after its last token [batch, vocab], cache).

    Args:
      model: callable `model(tokens, cache, pos, logits_at) -> {"logits", "cache"}` with
        `model.init_cache(batch, max_len)`; a `GPT2`, or a stub in tests.
      context: int32 [batch, P], the prompt in its first `prompt_len` columns; the rest is padding.
      prompt_len: int32 scalar in 1 .. P; or int32 [batch], each row's own, for prompts
        right-padded to P (the logits after each row's last token: `engine.Engine.add_many`).
      cache_len: Python int, the cache's length: at least P and prompt_len + length - 1.
      offsets: int32 [batch], prompts of different lengths: row b's is left-padded, it begins at
        column offsets[b] and ends at prompt_len - 1 as every row's (`GPT2.__call__`).
    """
    # Padding after the prompt is written to the cache too, but each position is overwritten by
    # its real token before any query can see it (queries see keys at positions <= their own).
    cache = model.init_cache(shape_list(context)[0], cache_len)
    if offsets is None:
        out = model(context, cache, 0, logits_at=prompt_len - 1)
    else:
        out = model(context, cache, 0, logits_at=prompt_len - 1, offsets=offsets)
    return out["logits"][:, -1], out["cache"]


def start_history(context, prompt_len, slots: int, stop_token):
    """int32 [batch, P + slots]: the prompt, then stop_token wherever no token is yet."""
    batch, width = shape_list(context)[0], shape_list(context)[1] + slots
    padded = tf.pad(context, [[0, 0], [0, slots]])  # [batch, P + slots]
    is_prompt = tf.range(width)[None, :] < prompt_len
    return tf.where(is_prompt, padded, tf.fill([batch, width], stop_token))


def start_state(
    logits, cache, context, prompt_len, slots: int, stop_token, offsets=None
) -> LoopState:
    """The loop's state before its first token: after `prefill` (with the same `offsets`),
    nothing chosen yet."""
    batch = shape_list(logits)[0]
    return LoopState(
        tf.constant(0),
        logits,
        cache,
        start_history(context, prompt_len, slots, stop_token),
        tf.zeros([batch], tf.bool),
        tf.zeros([batch], tf.int32) if offsets is None else offsets,
    )


def advance(model, state, prompt_len, length, settings, until, processors=PROCESSORS):
    """Run the loop from `state` until `until` tokens (of `length`) are chosen, or every row
    has stopped; returns the new state. Streaming calls it a chunk at a time: the draws are
    keyed by (seed, step), so the tokens equal one uninterrupted run.

    Args:
      model, prompt_len, length, settings, processors: as for `continue_decode`.
      state: a `LoopState` (`start_state`, or what the previous call returned).
      until: int32 scalar <= length.
    """
    columns = tf.range(shape_list(state.history)[1])
    stop = settings.stop_token

    def cond(state):
        return (state.step < until) & ~tf.reduce_all(state.done)

    def body(state):
        # One token from the logits at hand, then the model's logits after it: the sampling code
        # is traced and compiled once, not once more for a first token before the loop. After
        # the last token there is nothing to predict, and its position may lie past the context.
        step, position = state.step, prompt_len + state.step
        history = History(state.history, position, state.start, prompt_len)
        logits = apply_processors(state.logits, settings, history, processors)
        token = tf.where(state.done, stop, choose_tokens(logits, settings, step))  # [batch]

        def forward():
            out = model(token[:, None], state.cache, position, logits_at=0)
            return out["logits"][:, -1], out["cache"]

        logits, cache = tf.cond(step + 1 < length, forward, lambda: (state.logits, state.cache))
        history = tf.where(columns[None, :] == position, token[:, None], state.history)
        done = state.done | (token == stop)
        return (LoopState(step + 1, logits, cache, history, done, state.start),)

    (state,) = tf.while_loop(cond, body, (state,))
    return state


def output(state, prompt_len, slots: int):
    """int32 [batch, slots]: the tokens chosen after the prompt (stop_token where none yet)."""
    batch = shape_list(state.history)[0]
    return tf.slice(state.history, tf.stack([0, prompt_len]), [batch, slots])  # [batch, slots]


def continue_decode(
    model,
    logits,
    cache,
    context,
    prompt_len,
    length,
    settings,
    slots: int,
    processors=PROCESSORS,
    offsets=None,
):
    """The decode loop after `prefill`: `length` tokens, drawn from `logits` first.

    Args:
      model, context, prompt_len, offsets: as for `prefill` (`model` takes the same offsets);
        logits, cache: what it returned.
      length: int32 scalar in 1 .. slots: tokens to generate.
      settings: a `Settings`; its stop_token ends a row (-1: none).
      slots: Python int, the width of the result.
      processors: the logits processors every step applies (`processors.PROCESSORS`).
    Returns:
      int32 [batch, slots]: `length` tokens per row, then stop_token; rows are padded with
      stop_token after they emitted it.
    """
    state = start_state(logits, cache, context, prompt_len, slots, settings.stop_token, offsets)
    state = advance(model, state, prompt_len, length, settings, length, processors)
    return output(state, prompt_len, slots)


def decode(
    model, context, prompt_len, length, settings, slots: int, cache_len=None, processors=PROCESSORS
):
    """`prefill`, then `continue_decode`: up to `slots` tokens after a (padded) prompt.

    cache_len defaults to P + slots. Returns int32 [batch, slots] (see `continue_decode`).
    """
    cache_len = cache_len or shape_list(context)[1] + slots
    logits, cache = prefill(model, context, prompt_len, cache_len)
    return continue_decode(
        model, logits, cache, context, prompt_len, length, settings, slots, processors
    )
