"""Logits processors: what turns the model's next-token logits into the scores a strategy picks
from. Each is a pure function of (logits [batch, vocab], settings, history), compiled into the
decode loop; the functions the tests check are the ones that run.

Two kinds, as in Hugging Face's generation code:
- `PROCESSORS` change the scores every strategy sees (greedy and sampling alike; beam search
  next). Applied first, in order, as transformers orders them: the repetition penalty (Keskar et
  al. 2019, CTRL, sec. 4.1), then the ban on repeated n-grams (Paulus et al. 2017); both read
  the token history (prompt and output) and cost nothing when off.
- Sampling warpers shape the distribution a draw comes from: temperature, then top-k and top-p
  (`warp_temperature`, `truncate`), as openai/gpt-2's `src/sample.py` orders them, fixing its
  bugs: top-p
  compares each row against its own threshold (the original broadcast a [batch] threshold across
  the vocabulary, wrong at batch > 1), the token that crosses the threshold is kept (Holtzman et
  al. 2019, nucleus sampling), top-k and top-p combine, temperature 0 is greedy (no warper).

Top-k and top-p look for their thresholds among the top CANDIDATES logits of a row first: under
XLA on a CPU, tf.math.top_k(256) costs ~0.2 ms a row, a sort of the 50257-token vocabulary
~10 ms. A full sort is the fallback, taken only when top_k > CANDIDATES or the nucleus reaches
past them. The sampling strategy draws among the same candidates.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from gpt2_tf2.core.kernels import kth_largest, shape_list, top_k
from gpt2_tf2.generation.settings import Settings

NEG_INF = float("-inf")
CANDIDATES = 256


def seen_tokens(tokens, valid, vocab: int):
    """bool [batch, vocab]: which ids occur in `tokens` [batch, T] where `valid` [batch, T]."""
    batch, width = shape_list(tokens)
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, width])  # [batch, T]
    ids = tf.where(valid, tokens, 0)  # padding (-1 for "no stop token") never indexes
    counts = tf.scatter_nd(tf.stack([rows, ids], -1), tf.cast(valid, tf.int32), [batch, vocab])
    return counts > 0


def repetition_penalty(logits, settings, history):
    """CTRL's penalty (Keskar et al. 2019, eq. 2, as transformers applies it): the logit of a
    token already in the prompt or output is divided by the penalty if positive, multiplied by
    it if negative. 1 = off; > 1 discourages repeats."""
    penalty = tf.cast(settings.repetition_penalty, logits.dtype)

    def apply():
        seen = seen_tokens(history.tokens, history.valid(), shape_list(logits)[-1])
        return tf.where(seen, tf.where(logits < 0, logits * penalty, logits / penalty), logits)

    return tf.cond(penalty != 1.0, apply, lambda: logits)


def no_repeat_ngram(logits, settings, history):
    """Ban every token that would complete an n-gram already in the prompt or output (n =
    settings.no_repeat_ngram_size; 0 = off): where the last n-1 tokens occurred before, the
    token that followed them then is banned now (Paulus et al. 2017; transformers'
    NoRepeatNGramLogitsProcessor)."""
    n = tf.convert_to_tensor(settings.no_repeat_ngram_size, tf.int32)
    tokens, length = history.tokens, history.length
    width = shape_list(tokens)[1]
    starts = tf.range(width)  # t: an earlier n-gram tokens[t : t + n]

    def shifted(j):  # [batch, T]: tokens[:, t + j] (clipped past the end: masked below)
        return tf.gather(tokens, tf.minimum(starts + j, width - 1), axis=1)

    def apply():
        def body(j, match):
            last = tf.gather(tokens, length - n + 1 + j, axis=1)  # [batch]: the current prefix
            return j + 1, match & (shifted(j) == last[:, None])

        # The n-grams tokens[t : t + n] that lie within the row's own tokens so far.
        complete = history.valid() & (starts[None, :] + n - 1 < length)  # [batch, T]
        _, match = tf.while_loop(lambda j, m: j < n - 1, body, (tf.constant(0), complete))
        banned = seen_tokens(shifted(n - 1), match, shape_list(logits)[-1])
        return tf.where(banned, tf.cast(NEG_INF, logits.dtype), logits)

    return tf.cond((n > 0) & (length >= n), apply, lambda: logits)


PROCESSORS = (repetition_penalty, no_repeat_ngram)  # for every strategy, in this order


def apply_processors(logits, settings, history, processors=PROCESSORS):
    """(logits [batch, vocab], settings, History) -> the logits every strategy chooses from."""
    for processor in processors:
        logits = processor(logits, settings, history)
    return logits


def mask_below(logits, threshold):
    return tf.where(logits < threshold, tf.cast(NEG_INF, logits.dtype), logits)


def warp_temperature(logits, settings, history=None):
    """Divide by the temperature (> 0; greedy decoding skips the warpers)."""
    del history
    return logits / tf.cast(settings.temperature, logits.dtype)


def truncation(logits, settings):
    """(top_k clipped to the vocabulary, top_p) as tensors, and whether either is on."""
    k = tf.minimum(tf.convert_to_tensor(settings.top_k, tf.int32), shape_list(logits)[-1])
    p = tf.convert_to_tensor(settings.top_p, logits.dtype)
    return k, p, (k > 0) | (p < 1.0)


def thresholds(logits, ranked, k, p):
    """Top-k and top-p thresholds [batch, 1] from `ranked` [batch, n], each row's n largest
    logits in descending order, and whether they are exact (the nucleus lies within them).

    Top-k keeps the k largest logits of a row, ties with the k-th included (k == 0: all). Top-p
    then keeps, of those, the smallest set of most likely tokens whose probability reaches p:
    a token stays if the mass of the tokens strictly more likely than it is below p, so the token
    that crosses the threshold stays; p >= 1 keeps all.
    """
    n = ranked.shape[-1] or tf.shape(ranked)[-1]
    none = tf.fill(tf.shape(logits[:, :1]), tf.cast(NEG_INF, logits.dtype))  # [batch, 1]
    kth = tf.cond(k > 0, lambda: kth_largest(ranked, k), lambda: none)
    # Probabilities after top-k, normalised over the whole row, not only the ranked part.
    lse = tf.reduce_logsumexp(mask_below(logits, kth), axis=-1, keepdims=True)
    probs = tf.exp(mask_below(ranked, kth) - lse)  # [batch, n]
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.where(mass_before < p, ranked, tf.cast(float("inf"), ranked.dtype))
    nucleus = tf.cond(p < 1.0, lambda: tf.reduce_min(kept, axis=-1, keepdims=True), lambda: none)
    exact = (k <= n) & ((p >= 1.0) | tf.reduce_all(tf.reduce_sum(probs, axis=-1) >= p))
    return tf.maximum(kth, nucleus), exact


class Truncated(NamedTuple):
    """What top-k and top-p keep of each row, found among its top candidates: the logits
    >= threshold, if `exact`; else `full_threshold` must be asked."""

    threshold: tf.Tensor  # [batch, 1]
    values: tf.Tensor  # [batch, n]: the row's n largest logits, descending (the candidates)
    indices: tf.Tensor  # int32 [batch, n]: their token ids
    exact: tf.Tensor  # bool scalar: the thresholds lie within the candidates of every row


def truncate(logits, settings, candidates: int = CANDIDATES) -> Truncated:
    """Top-k then top-p on (warped) logits [batch, vocab], with at least one of them on."""
    k, p, _ = truncation(logits, settings)
    values, indices = top_k(logits, min(candidates, logits.shape[-1]))
    threshold, exact = thresholds(logits, values, k, p)
    return Truncated(threshold, values, indices, exact)


def full_threshold(logits, settings):
    """Top-k then top-p thresholds [batch, 1] from a sort of the whole row: the fallback."""
    k, p, _ = truncation(logits, settings)
    return thresholds(logits, tf.sort(logits, direction="DESCENDING"), k, p)[0]


def filter_logits(logits, temperature, top_k, top_p, candidates: int = CANDIDATES):
    """The warpers on full rows: temperature, then top-k, then top-p; masked logits are -inf.

    Args:
      logits: [batch, vocab] float.
      temperature: float scalar > 0; top_k: int scalar >= 0; top_p: float scalar in (0, 1].
      candidates: Python int, how many top logits the fast path looks at (tests make it small).
    """
    settings = Settings.make()._replace(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = warp_temperature(logits, settings)
    on = truncation(logits, settings)[2]

    def filtered():
        kept = truncate(logits, settings, candidates)

        def fallback():
            return full_threshold(logits, settings)

        return mask_below(logits, tf.cond(kept.exact, lambda: kept.threshold, fallback))

    return tf.cond(on, filtered, lambda: logits)


def top_k_filter(logits, k, candidates: int = CANDIDATES):
    """`filter_logits` with top-k only: the k largest logits of each row (ties kept)."""
    return filter_logits(logits, 1.0, k, 1.0, candidates)


def top_p_filter(logits, p, candidates: int = CANDIDATES):
    """`filter_logits` with top-p only: the nucleus of mass p of each row."""
    return filter_logits(logits, 1.0, 0, p, candidates)
