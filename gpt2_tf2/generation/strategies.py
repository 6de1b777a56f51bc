"""Strategies: how the next token is chosen from processed logits, one per row.

A strategy is a pure function `(logits, settings, step) -> int32 [batch]` the compiled loops
call (as keras-hub's samplers are objects with one method; beam search keeps beams, and so is a
loop of its own: `beam`). `choose_tokens` is the one they run: greedy where temperature == 0,
else a draw through the sampling warpers (`processors`).
"""

from __future__ import annotations

import tensorflow as tf

from gpt2_tf2.core.kernels import first_argmax, select_column, shape_list
from gpt2_tf2.generation.processors import (
    CANDIDATES,
    NEG_INF,
    full_threshold,
    full_thresholds_of,
    mask_below,
    truncate,
    truncation,
    warp_temperature,
)
from gpt2_tf2.generation.random import gumbel_noise


def greedy(logits, settings=None, step=0):
    """The most likely token of each row."""
    del settings, step
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def sample(logits, settings, step=0, candidates: int = CANDIDATES, rows=None):
    """A random draw from softmax(warped logits): temperature, top-k, top-p.

    The draw is the Gumbel-max trick, argmax(filtered logits + Gumbel noise), which samples
    exactly from softmax(filtered logits) (Gumbel 1954; Maddison et al. 2014) and, unlike
    tf.random.categorical, compiles under XLA. When the filters' survivors lie among the top
    `candidates` logits, noise is drawn for those only; the token drawn is the same either way.
    `step` and `rows`: as `random.gumbel_noise` takes them.
    """
    scaled = warp_temperature(logits, settings)
    vocab_ids = tf.broadcast_to(tf.range(shape_list(logits)[1]), tf.shape(logits))

    def over_all(threshold):
        noisy = mask_below(scaled, threshold) + gumbel_noise(vocab_ids, settings.seed, step, rows)
        return first_argmax(noisy)  # not tf.argmax: the noise fused into it (`first_argmax`)

    def truncated():
        kept = truncate(scaled, settings, candidates)
        # Every survivor is a candidate only if none ties with the threshold just past them.
        n = shape_list(kept.values)[1]
        ties = tf.reduce_any(kept.values[:, -1:] >= kept.threshold)
        among = kept.exact & ((n == shape_list(logits)[1]) | ~ties)

        def among_candidates():
            noise = gumbel_noise(kept.indices, settings.seed, step, rows)
            noisy = mask_below(kept.values, kept.threshold) + noise
            best = tf.argmax(noisy, axis=-1, output_type=tf.int32)[:, None]  # [batch, 1]
            return select_column(kept.indices, best)

        def fallback():  # the thresholds of the whole row (a search), noise for every token
            return over_all(full_threshold(scaled, settings))

        return tf.cond(among, among_candidates, fallback)

    no_threshold = tf.fill(tf.shape(logits[:, :1]), NEG_INF)
    on = truncation(scaled, settings)[2]
    if on.shape.rank == 2:
        return _sample_rows(logits, scaled, settings, step, candidates, rows, on, over_all)
    return tf.cond(on, truncated, lambda: over_all(no_threshold))


def _sample_rows(logits, scaled, settings, step, candidates, rows, on, over_all):
    """`sample` where rows have their own settings (a decode engine's slots): each row takes its
    own path, so that another row (or a free slot) never sends it down a dearer one. A row whose
    top-k/top-p survivors lie among its candidates draws among them; a row without top-k or
    top-p draws from its whole row; only a row whose nucleus reaches past its candidates needs
    the search of its whole row. The token is the same on every path (the noise is keyed by
    token id), so the choice of path is speed only."""
    vocab = shape_list(logits)[1]
    sampled = tf.convert_to_tensor(settings.temperature)[:, None] > 0  # [batch, 1]
    kept = truncate(scaled, settings, candidates)
    n = shape_list(kept.values)[1]
    ties = kept.values[:, -1:] >= kept.threshold  # [batch, 1]
    among = kept.exact & ((n == vocab) | ~ties)
    noise = gumbel_noise(kept.indices, settings.seed, step, rows)
    best = tf.argmax(mask_below(kept.values, kept.threshold) + noise, axis=-1, output_type=tf.int32)
    token = select_column(kept.indices, best[:, None])  # [batch]
    plain = ~on & sampled  # no threshold: noise over the whole row
    search = (on & ~among & sampled)[:, 0]  # a threshold past the candidates: search the row
    whole = plain[:, 0] | search  # drawn from the whole row, below its threshold (-inf: none)

    def drawn():
        return over_all(full_thresholds_of(scaled, settings, search))

    return tf.where(
        whole, tf.cond(tf.reduce_any(whole), drawn, lambda: tf.zeros_like(token)), token
    )


def choose_tokens(logits, settings, step=0, candidates: int = CANDIDATES, rows=None):
    """One token per row: greedy (argmax) where temperature == 0, else `sample`.

    Args:
      logits: [batch, vocab], after `processors.apply_processors`.
      settings: a `Settings` (temperature, top_k, top_p, seed): scalars for the batch, or [batch]
        (seed [batch, 2]) where each row has its own (a decode engine's slots).
      step: int scalar, the decoding step (the noise is a function of seed, step, row, token),
        or [batch], each row's own; rows: as `random.gumbel_noise` takes them.
    Returns:
      int32 [batch].
    """
    logits = tf.cast(logits, tf.float32)
    temperature = tf.convert_to_tensor(settings.temperature, tf.float32)
    if temperature.shape.rank == 0:
        return tf.cond(
            temperature > 0,
            lambda: sample(logits, settings, step, candidates, rows),
            lambda: greedy(logits),
        )
    most_likely = greedy(logits)
    drawn = tf.cond(
        tf.reduce_any(temperature > 0),
        lambda: sample(logits, settings, step, candidates, rows),
        lambda: most_likely,
    )
    return tf.where(temperature > 0, drawn, most_likely)
