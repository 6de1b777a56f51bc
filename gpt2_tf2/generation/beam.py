"""Beam search's step and state: `choose` (everything but the model) and, on xla, `advance`, one
compiled `tf.while_loop` of `choose` and the model over a fixed-shape cache (on tflite
`beams.LiteBeams` runs `choose` between the interpreter's steps; `beams.BeamSearch` runs either
behind the decode engine's interface).

Follows transformers' vectorized beam search (`GenerationMixin._beam_search`, v4.50+), so that
the same settings give the same beams: each step scores every (beam, token) continuation by its
summed log-probability (after the logits processors, which read each beam's history), keeps the
best 2K of the K*V (so that K beams remain open even if the best K all end), moves those that
end (the stop token, or the last position) to a list of K finished hypotheses scored
sum_logprob / generated_length ** length_penalty (Wu et al. 2016, sec. 7, in its simplest
form), and continues with the K best open ones. `early_stopping` stops a row as soon as K
hypotheses are finished; otherwise a row stops when no open beam can beat its worst finished
one (transformers' heuristic for early_stopping=False).

Shapes: B prompts, K beams, V tokens, W = P + slots history columns (prompt, then output).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from gpt2_tf2.core.kernels import shape_list
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import PROCESSORS, apply_processors

NONE = -1.0e9  # transformers' score of an empty or excluded hypothesis


class BeamState(NamedTuple):
    step: tf.Tensor  # int32 scalar: tokens chosen so far
    logits: tf.Tensor  # [B * K, V]: next-token logits of the open beams
    cache: list  # the model's cache, rows ordered as the open beams
    running: tf.Tensor  # int32 [B, K, W]: open beams
    running_scores: tf.Tensor  # [B, K]: their summed log-probabilities
    finished: tf.Tensor  # int32 [B, K, W]: finished hypotheses, best first
    finished_scores: tf.Tensor  # [B, K]: their length-penalized scores (NONE: empty slot)
    is_finished: tf.Tensor  # bool [B, K]: the slot holds a hypothesis
    improvable: tf.Tensor  # bool [B, 1]: an open beam may still beat a finished one
    all_ended: tf.Tensor  # bool scalar: every continuation kept at the last step ended


def gather_beams(x, index):
    """x [B, N, ...] gathered along N by index [B, M] -> [B, M, ...]."""
    return tf.gather(x, index, batch_dims=1)


def reorder_cache(cache, rows, n_head: int):
    """The cache's rows (beams) in a new order: rows int32 [B * K] indexes the old rows."""
    out = []
    for keys, values in cache:
        pair = []
        for x in (keys, values):
            t, d = shape_list(x)[1:]
            per_row = tf.reshape(x, [-1, n_head, t, d])  # [B * K, heads, T, head_dim]
            pair.append(tf.reshape(tf.gather(per_row, rows), [-1, t, d]))
        out.append(tuple(pair))
    return out


def beam_search(
    model,
    logits,
    cache,
    context,
    prompt_len,
    length,
    settings,
    slots: int,
    num_beams: int,
    n_head: int,
    length_penalty,
    early_stopping: bool,
    processors=PROCESSORS,
):
    """Beam search after `loop.prefill` of the K-times-repeated prompts: `start`, `advance` to
    the end, `result`.

    Args:
      model: as for `loop.prefill`; logits [B * K, V], cache: what prefill returned for `context`
        int32 [B * K, P] (each prompt repeated K times), prompt_len: int32 scalar.
      length: int32 scalar in 1 .. slots, the most tokens to generate.
      settings: a `Settings`: stop_token ends a hypothesis (-1: only the length does); the
        repetition settings apply to every beam's history; the sampling ones are not used.
      slots, num_beams, n_head: Python ints (the width of the result, K, the cache's heads).
      length_penalty: float scalar; > 0 favours longer hypotheses, < 0 shorter ones.
      early_stopping: Python bool, stop a row once K hypotheses are finished.
    Returns:
      (int32 [B, K, slots] hypotheses best first, continuation only, padded with the stop token
      (or 0); [B, K] their scores).
    """
    state = start(logits, cache, context, prompt_len, settings, slots, num_beams)
    options = (n_head, length_penalty, early_stopping)
    state = advance(model, state, prompt_len, length, settings, length, options, processors)
    return result(state, prompt_len, slots)


def start(logits, cache, context, prompt_len, settings, slots: int, num_beams: int) -> BeamState:
    """The state before the first step: K equal beams of each prompt, of which one counts."""
    k = num_beams
    batch = shape_list(context)[0] // k
    columns = tf.range(shape_list(context)[1] + slots)
    pad = tf.maximum(settings.stop_token, 0)
    begin = tf.reshape(context, [batch, k, -1])  # [B, K, P]
    begin = tf.pad(begin, [[0, 0], [0, 0], [0, slots]])  # [B, K, W]
    begin = tf.where(columns < prompt_len, begin, pad)
    first_only = tf.where(tf.range(k) == 0, 0.0, NONE)  # the beams start equal: one counts
    return BeamState(
        tf.constant(0),
        logits,
        cache,
        begin,
        tf.tile(first_only[None, :], [batch, 1]),
        begin,
        tf.fill([batch, k], NONE),
        tf.zeros([batch, k], tf.bool),
        tf.ones([batch, 1], tf.bool),
        tf.constant(False),
    )


def result(state: BeamState, prompt_len, slots: int):
    """(int32 [B, K, slots] hypotheses best first, continuation only; [B, K] their scores)."""
    batch, k = shape_list(state.finished)[:2]
    out = tf.slice(state.finished, tf.stack([0, 0, prompt_len]), [batch, k, slots])
    return out, state.finished_scores


def going(s: BeamState, length, early_stopping: bool):
    """bool scalar: the search goes on (a step to take, and a row whose best may still change)."""
    open_rows = ~(tf.reduce_all(s.is_finished) & early_stopping)
    return (s.step < length) & tf.reduce_any(s.improvable) & open_rows & ~s.all_ended


def advance(model, state, prompt_len, length, settings, until, options, processors=PROCESSORS):
    """Steps of the search until `state.step` reaches `until` (int32 scalar; `length`: to the
    end) or the search is over: one compiled loop, or several in turn with the same result
    (a progress bar between them). options: (n_head, length_penalty, early_stopping)."""
    n_head, _, early_stopping = options

    def body(s):
        s, rows, new_tokens = choose(s, prompt_len, length, settings, options, processors)
        cache = reorder_cache(s.cache, tf.reshape(rows, [-1]), n_head)
        cur = prompt_len + s.step - 1  # the column the new tokens are at

        def forward():
            out = model(tf.reshape(new_tokens, [-1, 1]), cache, cur, logits_at=0)
            return out["logits"][:, -1], out["cache"]

        logits, cache = tf.cond(s.step < length, forward, lambda: (s.logits, cache))
        return (s._replace(logits=logits, cache=cache),)

    (state,) = tf.while_loop(
        lambda s: going(s, length, early_stopping) & (s.step < until), body, (state,)
    )
    return state


def choose(s: BeamState, prompt_len, length, settings, options, processors=PROCESSORS):
    """One step of the search without the model: (the state after it, its logits and cache
    not yet those of the new tokens; rows int32 [B, K], the old cache row (beam) of each open
    beam, which the cache must follow; new_tokens int32 [B, K], the token each open beam adds
    at column prompt_len + s.step, which the model reads next). Either backend's loop calls it
    (`advance` here, compiled with the model; on tflite between the interpreter's steps)."""
    _, length_penalty, early_stopping = options
    batch, k, width = shape_list(s.running)
    vocab = shape_list(s.logits)[-1]
    stop = settings.stop_token
    penalty = tf.cast(length_penalty, tf.float32)
    max_length = prompt_len + length
    first_k = tf.range(2 * k) < k  # [2K]: only the best K continuations may finish
    columns = tf.range(width)
    cur = prompt_len + s.step  # the column this step writes
    flat = tf.reshape(s.running, [batch * k, width])  # [B * K, W]
    log_probs = tf.nn.log_softmax(tf.cast(s.logits, tf.float32))  # [B * K, V]
    log_probs = apply_processors(log_probs, settings, History(flat, cur, 0, prompt_len), processors)
    total = tf.reshape(log_probs, [batch, k, vocab]) + s.running_scores[:, :, None]
    top_scores, top_index = tf.math.top_k(tf.reshape(total, [batch, k * vocab]), 2 * k)
    top_beam, token = top_index // vocab, top_index % vocab  # [B, 2K] each
    candidates = gather_beams(s.running, top_beam)  # [B, 2K, W]
    candidates = tf.where(columns == cur, token[:, :, None], candidates)
    ended = (token == stop) | (cur + 1 >= max_length)  # [B, 2K]

    # The K best continuations that did not end stay open.
    open_scores = top_scores + tf.cast(ended, tf.float32) * NONE
    _, keep = tf.math.top_k(open_scores, k)  # [B, K]
    running = gather_beams(candidates, keep)
    running_scores = gather_beams(open_scores, keep)

    # Those of the best K that ended join the finished list if they beat its worst.
    just_ended = ended & first_k[None, :]
    generated = tf.cast(s.step + 1, tf.float32)
    scores = top_scores / generated**penalty
    full = tf.reduce_all(s.is_finished, axis=-1, keepdims=True) & early_stopping
    scores += tf.cast(full | ~s.improvable | ~just_ended, tf.float32) * NONE
    merged_scores = tf.concat([s.finished_scores, scores], axis=1)  # [B, 3K]
    _, best = tf.math.top_k(merged_scores, k)
    finished = gather_beams(tf.concat([s.finished, candidates], axis=1), best)
    finished_scores = gather_beams(merged_scores, best)
    is_finished = gather_beams(tf.concat([s.is_finished, just_ended], axis=1), best)

    # The open beams' cache rows follow them; the model reads their new tokens next.
    source = gather_beams(top_beam, keep)  # [B, K]: the old beam each open one extends
    rows = source + tf.range(batch)[:, None] * k  # [B, K]
    new_tokens = gather_beams(token, keep)  # [B, K]

    # Can an open beam still beat the worst finished hypothesis (at its current length)?
    best_open = running_scores[:, :1] / generated**penalty  # [B, 1]
    worst = tf.reduce_min(finished_scores, axis=1, keepdims=True)
    worst = tf.where(is_finished, worst, NONE)  # [B, K]
    improvable = s.improvable & tf.reduce_any(best_open > worst, axis=-1, keepdims=True)
    state = BeamState(
        s.step + 1,
        s.logits,
        s.cache,
        running,
        running_scores,
        finished,
        finished_scores,
        is_finished,
        improvable,
        tf.reduce_all(ended),
    )
    return state, rows, new_tokens
