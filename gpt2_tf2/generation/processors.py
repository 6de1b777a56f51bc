"""Logits processors: what turns the model's next-token logits into the scores a strategy picks
from. Each is a pure function of (logits [batch, vocab], settings, history), compiled into the
decode loop; the functions the tests check are the ones that run.

Two kinds, as in Hugging Face's generation code:
- `PROCESSORS` change the scores every strategy sees (greedy, sampling and beam search).
  Applied first, in order: the stop token's ban before min_new_tokens, the repetition penalty
  (Keskar et al. 2019, CTRL, sec. 4.1), OpenAI's presence and frequency penalties (on the
  output only), then the ban on repeated n-grams (Paulus et al. 2017); they read the token
  history and cost nothing when off.
- Sampling warpers shape the distribution a draw comes from: temperature, then top-k and top-p
  (`warp_temperature`, `truncate`), as openai/gpt-2's `src/sample.py` orders them, fixing its
  bugs: top-p
  compares each row against its own threshold (the original broadcast a [batch] threshold across
  the vocabulary, wrong at batch > 1), the token that crosses the threshold is kept (Holtzman et
  al. 2019, nucleus sampling), top-k and top-p combine, temperature 0 is greedy (no warper).

Top-k and top-p look for their thresholds among the top CANDIDATES logits of a row first: under
XLA on a CPU, tf.math.top_k(256) costs ~0.2 ms a row. Only when top_k > CANDIDATES or the
nucleus reaches past them is the whole row searched (`full_threshold`): by bisection over the
logits' ordered bits, not a sort (a sort of the 50257-token vocabulary takes ~7 ms a row under
XLA on a CPU). The sampling strategy draws among the same candidates.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from gpt2_tf2.core.kernels import kth_largest, shape_list, top_k
from gpt2_tf2.generation.settings import Settings

NEG_INF = float("-inf")
CANDIDATES = 256


def per_row(value, dtype):
    """A setting as a tensor that broadcasts against [batch, n] logits: a scalar (one value for
    the batch) as it is; a [batch] vector (each row its own, as a decode engine's slots have)
    as [batch, 1]."""
    x = tf.convert_to_tensor(value, dtype)
    return x[:, None] if x.shape.rank == 1 else x


def any_row(condition):
    """Whether any row needs a branch: the condition itself for a batch-wide setting (so that
    path keeps its graph op for op), else any of the rows'."""
    return condition if condition.shape.rank == 0 else tf.reduce_any(condition)


def token_counts(tokens, valid, vocab: int):
    """int32 [batch, vocab]: how often each id occurs in `tokens` [batch, T] where `valid`."""
    batch, width = shape_list(tokens)
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, width])  # [batch, T]
    ids = tf.where(valid, tokens, 0)  # padding (-1 for "no stop token") never indexes
    return tf.scatter_nd(tf.stack([rows, ids], -1), tf.cast(valid, tf.int32), [batch, vocab])


def seen_tokens(tokens, valid, vocab: int):
    """bool [batch, vocab]: which ids occur in `tokens` [batch, T] where `valid` [batch, T]."""
    return token_counts(tokens, valid, vocab) > 0


def repetition_penalty(logits, settings, history):
    """CTRL's penalty (Keskar et al. 2019, eq. 2, as transformers applies it): the logit of a
    token already in the prompt or output is divided by the penalty if positive, multiplied by
    it if negative. 1 = off; > 1 discourages repeats."""
    penalty = per_row(tf.cast(settings.repetition_penalty, logits.dtype), logits.dtype)

    def apply():  # a row whose penalty is 1 is left as it is by the same formula
        seen = seen_tokens(history.tokens, history.valid(), shape_list(logits)[-1])
        return tf.where(seen, tf.where(logits < 0, logits * penalty, logits / penalty), logits)

    return tf.cond(any_row(penalty != 1.0), apply, lambda: logits)


def presence_frequency_penalty(logits, settings, history):
    """OpenAI's penalties (its API reference's formula): logit[j] -= c[j] * frequency_penalty +
    (c[j] > 0) * presence_penalty, where c[j] counts token j in the output so far (not the
    prompt). 0 = off; either may be negative (favouring repeats)."""
    presence = per_row(tf.cast(settings.presence_penalty, logits.dtype), logits.dtype)
    frequency = per_row(tf.cast(settings.frequency_penalty, logits.dtype), logits.dtype)

    def apply():
        counts = token_counts(history.tokens, history.output_valid(), shape_list(logits)[-1])
        counts = tf.cast(counts, logits.dtype)
        return logits - counts * frequency - tf.cast(counts > 0, logits.dtype) * presence

    return tf.cond(any_row((presence != 0.0) | (frequency != 0.0)), apply, lambda: logits)


def min_new_tokens(logits, settings, history):
    """The stop token banned while the output holds fewer than min_new_tokens tokens
    (transformers' MinNewTokensLengthLogitsProcessor; vLLM's min_tokens). 0 = off; a row
    without a stop token (-1) bans nothing."""
    least = tf.reshape(tf.convert_to_tensor(settings.min_new_tokens, tf.int32), [-1, 1])
    stop = tf.reshape(tf.convert_to_tensor(settings.stop_token, tf.int32), [-1, 1])

    def apply():
        early = tf.reshape(history.generated(), [-1, 1]) < least  # [batch or 1, 1]
        banned = early & (tf.range(shape_list(logits)[-1])[None, :] == stop)
        return tf.where(banned, tf.cast(NEG_INF, logits.dtype), logits)

    return tf.cond(tf.reduce_any(least > 0), apply, lambda: logits)


def no_repeat_ngram(logits, settings, history):
    """Ban every token that would complete an n-gram already in the prompt or output (n =
    settings.no_repeat_ngram_size; 0 = off): where the last n-1 tokens occurred before, the
    token that followed them then is banned now (Paulus et al. 2017; transformers'
    NoRepeatNGramLogitsProcessor)."""
    n = tf.convert_to_tensor(settings.no_repeat_ngram_size, tf.int32)
    tokens, length = history.tokens, history.length
    if n.shape.rank == 1 or tf.convert_to_tensor(length).shape.rank == 1:
        return _no_repeat_ngram_rows(logits, n, history)
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


def _no_repeat_ngram_rows(logits, n, history):
    """`no_repeat_ngram` where each row has its own n-gram size or its own length so far (the
    slots of a decode engine): the same bans, row by row."""
    tokens = history.tokens
    batch, width = shape_list(tokens)
    n = tf.broadcast_to(n, [batch])
    length = tf.broadcast_to(tf.convert_to_tensor(history.length, tf.int32), [batch])
    starts = tf.range(width)[None, :]  # [1, T]: an earlier n-gram tokens[t : t + n]
    on = (n > 0) & (length >= n)  # [batch]

    def at(columns):  # tokens[b, columns[b, i]], clipped to the row (masked where it matters)
        columns = tf.broadcast_to(columns, [batch, shape_list(columns)[1]])
        return tf.gather(tokens, tf.clip_by_value(columns, 0, width - 1), batch_dims=1)

    def apply():
        def body(j, match):
            last = at((length - n + 1 + j)[:, None])  # [batch, 1]: the current prefix's j-th
            compared = j < n[:, None] - 1  # rows whose prefix is shorter are done
            return j + 1, match & (~compared | (at(starts + j) == last))

        complete = history.valid() & (starts + n[:, None] - 1 < length[:, None]) & on[:, None]
        most = tf.reduce_max(n) - 1
        _, match = tf.while_loop(lambda j, m: j < most, body, (tf.constant(0), complete))
        banned = seen_tokens(at(starts + n[:, None] - 1), match, shape_list(logits)[-1])
        return tf.where(banned, tf.cast(NEG_INF, logits.dtype), logits)

    return tf.cond(tf.reduce_any(on), apply, lambda: logits)


# For every strategy, in this order (vLLM's: the stop token's ban, then the penalties).
PROCESSORS = (min_new_tokens, repetition_penalty, presence_frequency_penalty, no_repeat_ngram)
# The value of each one's setting that turns it off: `settings.OFF` (plain NumPy, read by the
# tflite backend's greedy path before TensorFlow is imported).


def apply_processors(logits, settings, history, processors=PROCESSORS):
    """(logits [batch, vocab], settings, History) -> the logits every strategy chooses from."""
    for processor in processors:
        logits = processor(logits, settings, history)
    return logits


def mask_below(logits, threshold):
    return tf.where(logits < threshold, tf.cast(NEG_INF, logits.dtype), logits)


def warp_temperature(logits, settings, history=None):
    """Divide by the temperature (> 0; greedy decoding skips the warpers; a greedy row among
    sampled ones, temperature 0, is divided by 1: its token is the argmax anyway)."""
    del history
    t = per_row(tf.cast(settings.temperature, logits.dtype), logits.dtype)
    if t.shape.rank == 2:
        t = tf.where(t > 0, t, tf.ones_like(t))
    return logits / t


def truncation(logits, settings):
    """(top_k clipped to the vocabulary, top_p) as tensors, and whether either is on (scalars,
    or [batch, 1] where each row has its own: `per_row`)."""
    k = tf.minimum(per_row(settings.top_k, tf.int32), shape_list(logits)[-1])
    p = per_row(tf.cast(settings.top_p, logits.dtype), logits.dtype)
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
    if k.shape.rank == 2 or p.shape.rank == 2:
        return _row_thresholds(logits, ranked, k, p, n, none)
    kth = tf.cond(k > 0, lambda: kth_largest(ranked, k), lambda: none)
    # Probabilities after top-k, normalised over the whole row, not only the ranked part.
    lse = tf.reduce_logsumexp(mask_below(logits, kth), axis=-1, keepdims=True)
    probs = tf.exp(mask_below(ranked, kth) - lse)  # [batch, n]
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.where(mass_before < p, ranked, tf.cast(float("inf"), ranked.dtype))
    nucleus = tf.cond(p < 1.0, lambda: tf.reduce_min(kept, axis=-1, keepdims=True), lambda: none)
    exact = (k <= n) & ((p >= 1.0) | tf.reduce_all(tf.reduce_sum(probs, axis=-1) >= p))
    return tf.maximum(kth, nucleus), exact


def _row_thresholds(logits, ranked, k, p, n, none):
    """`thresholds` where rows have their own top_k and top_p ([batch, 1]): the same rules row
    by row, and whether each row's are exact ([batch, 1]; a row with neither on never is: it
    draws from its whole vocabulary)."""
    kth = tf.where(k > 0, kth_largest(ranked, tf.maximum(k, 1)), none)
    lse = tf.reduce_logsumexp(mask_below(logits, kth), axis=-1, keepdims=True)
    probs = tf.exp(mask_below(ranked, kth) - lse)  # [batch, n]
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.where(mass_before < p, ranked, tf.cast(float("inf"), ranked.dtype))
    nucleus = tf.where(p < 1.0, tf.reduce_min(kept, axis=-1, keepdims=True), none)
    within = (p >= 1.0) | (tf.reduce_sum(probs, axis=-1, keepdims=True) >= p)
    exact = (k <= n) & within & ((k > 0) | (p < 1.0))  # [batch, 1]: each row's own
    return tf.maximum(kth, nucleus), exact


class Truncated(NamedTuple):
    """What top-k and top-p keep of each row, found among its top candidates: the logits
    >= threshold, if `exact`; else `full_threshold` must be asked."""

    threshold: tf.Tensor  # [batch, 1]
    values: tf.Tensor  # [batch, n]: the row's n largest logits, descending (the candidates)
    indices: tf.Tensor  # int32 [batch, n]: their token ids
    exact: tf.Tensor  # bool: the thresholds lie within the candidates (scalar: of every row;
    # [batch, 1] where rows have their own settings: of each)


def truncate(logits, settings, candidates: int = CANDIDATES) -> Truncated:
    """Top-k then top-p on (warped) logits [batch, vocab], with at least one of them on."""
    k, p, _ = truncation(logits, settings)
    values, indices = top_k(logits, min(candidates, logits.shape[-1]))
    threshold, exact = thresholds(logits, values, k, p)
    return Truncated(threshold, values, indices, exact)


def full_threshold(logits, settings):
    """Top-k then top-p thresholds [batch, 1] of the whole row: the fallback."""
    k, p, _ = truncation(logits, settings)
    return _searched_thresholds(logits, k, p)


def _float_keys(x):
    """int32 keys in the order of the float32 values x (IEEE 754's bits, the negatives' magnitude
    bits flipped: the sortable-integer map radix sorts use), and back (`_key_floats`)."""
    bits = tf.bitcast(x, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, 0x7FFFFFFF), bits)


def _key_floats(keys):
    bits = tf.where(keys < 0, tf.bitwise.bitwise_xor(keys, 0x7FFFFFFF), keys)
    return tf.bitcast(bits, tf.float32)


def _smallest_key(lo, hi, holds):
    """The smallest int32 key K in [lo, hi] ([batch, 1] each) for which holds(K) ([batch, 1]
    bool, false below some key and true from it on; true at hi): bisection, at most 32 rounds
    (the midpoint in int64: hi - lo can pass int32's range)."""
    lo, hi = tf.cast(lo, tf.int64), tf.cast(hi, tf.int64)

    def halve(lo, hi):
        mid = lo + (hi - lo) // 2
        true = holds(tf.cast(mid, tf.int32))
        return tf.where(true, lo, mid + 1), tf.where(true, mid, hi)

    lo, _ = tf.while_loop(lambda lo, hi: tf.reduce_any(lo < hi), halve, (lo, hi))
    return tf.cast(lo, tf.int32)


def _searched_thresholds(logits, k, p):
    """`thresholds` of whole rows of `logits`, for k and p as `truncation` gives them, found by
    bisection over the values' keys instead of a sort (under XLA on a CPU a sort of 50257
    logits takes ~7 ms a row; each of the at most 32 rounds here is one masked count or sum).

    The k-th largest logit is the smallest key with fewer than k keys above it (ties with it
    stay, as in `kth_largest`). The nucleus is the smallest key whose logit keeps its token:
    the mass of the tokens strictly more likely than it (after top-k) is below p; that mass
    only changes at a logit, so the key found is a logit's. Both keys are logits of the row.
    The masses are sums in another order than a sort's running sum: they can part in float32's
    last bits, and so, on a flat row, the nucleus's last few tokens (as XLA's running sum and
    an eager one already did)."""
    x = tf.cast(logits, tf.float32)
    keys = _float_keys(x)  # [batch, vocab]
    lo = tf.reduce_min(keys, axis=-1, keepdims=True)
    hi = tf.reduce_max(keys, axis=-1, keepdims=True)
    none = tf.fill(tf.shape(x[:, :1]), NEG_INF)  # [batch, 1]
    k = tf.broadcast_to(k, tf.shape(none))
    p = tf.broadcast_to(tf.cast(p, tf.float32), tf.shape(none))

    def kth():
        def fewer_above(key):
            return tf.reduce_sum(tf.cast(keys > key, tf.int32), -1, keepdims=True) < k

        found = _key_floats(_smallest_key(lo, hi, fewer_above))
        return tf.where(k > 0, found, none)

    kth = tf.cond(tf.reduce_any(k > 0), kth, lambda: none)

    def nucleus():
        after_k = mask_below(x, kth)  # probabilities after top-k, over the whole row
        probs = tf.exp(after_k - tf.reduce_logsumexp(after_k, -1, keepdims=True))

        def mass_above_below_p(key):
            return tf.reduce_sum(tf.where(keys > key, probs, 0.0), -1, keepdims=True) < p

        found = _key_floats(_smallest_key(lo, hi, mass_above_below_p))
        return tf.where(p < 1.0, found, none)

    nucleus = tf.cond(tf.reduce_any(p < 1.0), nucleus, lambda: none)
    return tf.cast(tf.maximum(kth, nucleus), logits.dtype)


def full_thresholds_of(logits, settings, which):
    """`full_threshold` of the rows where `which` (bool [batch]), -inf for the others; settings:
    each row its own ([batch]). Up to half the rows are searched one at a time (a row's
    threshold the same to the bit either way): a decode engine's rows each take their own path,
    and the search of one row whose nucleus reaches past its candidates must not become a
    search of every row (with a sort instead, 16 slots of the 124M shape: a step went from 86
    to 285 ms for one such row among them; bench/step_speed.py --server --top_p_rows 1)."""
    k, p, _ = truncation(logits, settings)  # [batch, 1] each
    none = tf.fill(tf.shape(logits[:, :1]), tf.cast(NEG_INF, logits.dtype))

    def row(i, found):
        def search():
            # tf.slice with a constant size: a row of static shape [1, ...] under XLA.
            one, k_i, p_i = (tf.slice(t, [i, 0], [1, -1]) for t in (logits, k, p))
            return tf.tensor_scatter_nd_update(found, [[i]], _searched_thresholds(one, k_i, p_i))

        return i + 1, tf.cond(which[i], search, lambda: found)

    def each():
        return tf.while_loop(lambda i, _: i < rows, row, (tf.constant(0), none))[1]

    def together():  # most rows: one search of all costs less than as many of one
        return tf.where(which[:, None], _searched_thresholds(logits, k, p), none)

    rows = tf.shape(logits)[0]
    many = 2 * tf.reduce_sum(tf.cast(which, tf.int32)) > rows
    return tf.cond(many, together, each)


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
