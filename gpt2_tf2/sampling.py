"""Sampling: pure logit filters and one compiled decode loop over a fixed-shape cache.

Mirrors openai/gpt-2's `src/sample.py` (temperature, then top-k, then top-p, then a categorical
draw), fixing its bugs: top-p compares each row against its own threshold (the original broadcast a
[batch] threshold across the vocabulary, wrong at batch > 1), the token that crosses the
threshold is kept (Holtzman et al. 2019, nucleus sampling), top-k and top-p combine, temperature 0
is greedy. Settings are tensors, so changing them never retraces; randomness is stateless,
keyed by (seed, step), so the same seed gives the same samples. Everything here compiles with
XLA: the filters share one tf.math.top_k of constant size, and draws use the Gumbel-max trick.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from gpt2_tf2.tracing import in_xla, shape_list

NEG_INF = float("-inf")
# Filters look for their threshold among the top CANDIDATES logits of a row first: under XLA on a
# CPU, tf.math.top_k(256) costs ~0.2 ms a row, a sort of the 50257-token vocabulary ~10 ms. A full
# sort is the fallback, taken only when top_k > CANDIDATES or the nucleus reaches past them.
CANDIDATES = 256


def _mask_below(logits, threshold):
    return tf.where(logits < threshold, tf.cast(NEG_INF, logits.dtype), logits)


def _thresholds(logits, ranked, k, p):
    """Top-k and top-p thresholds [batch, 1] from `ranked` [batch, n], each row's n largest
    logits in descending order, and whether they are exact (the nucleus lies within them)."""
    n = ranked.shape[-1] or tf.shape(ranked)[-1]
    none = tf.fill(tf.shape(logits[:, :1]), tf.cast(NEG_INF, logits.dtype))  # [batch, 1]
    # Read the k-th value with a masked reduction, not a gather or slice: XLA on a CPU then keeps
    # tf.math.top_k as its fast TopK (1 ms for 8 rows) instead of a full sort (75 ms, measured).
    first_k = tf.range(n) < tf.minimum(k, n)
    kth = tf.cond(
        k > 0,
        lambda: tf.reduce_min(tf.where(first_k, ranked, float("inf")), axis=-1, keepdims=True),
        lambda: none,
    )
    # Probabilities after top-k, normalised over the whole row, not only the ranked part.
    lse = tf.reduce_logsumexp(_mask_below(logits, kth), axis=-1, keepdims=True)
    probs = tf.exp(_mask_below(ranked, kth) - lse)  # [batch, n]
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.where(mass_before < p, ranked, tf.cast(float("inf"), ranked.dtype))
    nucleus = tf.cond(p < 1.0, lambda: tf.reduce_min(kept, axis=-1, keepdims=True), lambda: none)
    exact = (k <= n) & ((p >= 1.0) | tf.reduce_all(tf.reduce_sum(probs, axis=-1) >= p))
    return tf.maximum(kth, nucleus), exact


def _top(logits, n: int):
    """tf.math.top_k(logits, n). Under XLA behind an optimization barrier: XLA on a CPU runs a
    top-k as a fast TopK (1 ms for 8 x 50257) only while its sort-and-slice pattern survives;
    a later slice of the result merged into it and made it a full sort (75 ms, measured)."""
    top = tf.math.top_k(logits, n)
    if in_xla():
        return tuple(xla.optimization_barrier(top.values, top.indices))
    return top.values, top.indices


def _settings(logits, temperature, top_k, top_p):
    logits = logits / tf.cast(temperature, logits.dtype)
    k = tf.minimum(tf.convert_to_tensor(top_k, tf.int32), logits.shape[-1] or tf.shape(logits)[-1])
    return logits, k, tf.convert_to_tensor(top_p, logits.dtype)


def _full_threshold(logits, k, p):
    return _thresholds(logits, k=k, p=p, ranked=tf.sort(logits, direction="DESCENDING"))[0]


def filter_logits(logits, temperature, top_k, top_p, candidates: int = CANDIDATES):
    """Temperature, then top-k, then top-p, as the original orders them. temperature must be > 0.

    Top-k keeps the k largest logits of a row, ties with the k-th included (k == 0: all). Top-p
    then keeps, of those, the smallest set of most likely tokens whose probability reaches p:
    a token stays if the mass of the tokens strictly more likely than it is below p, so the token
    that crosses the threshold stays (Holtzman et al. 2019); p >= 1 keeps all. Each row uses its
    own thresholds.

    Args:
      logits: [batch, vocab] float.
      temperature: float scalar > 0; top_k: int scalar >= 0; top_p: float scalar in (0, 1].
      candidates: Python int, how many top logits the fast path looks at (tests make it small).
    """
    logits, k, p = _settings(logits, temperature, top_k, top_p)

    def filtered():
        top, _ = _top(logits, min(candidates, logits.shape[-1]))
        threshold, exact = _thresholds(logits, top, k, p)
        threshold = tf.cond(exact, lambda: threshold, lambda: _full_threshold(logits, k, p))
        return _mask_below(logits, threshold)

    return tf.cond((k > 0) | (p < 1.0), filtered, lambda: logits)


def top_k_filter(logits, k, candidates: int = CANDIDATES):
    """`filter_logits` with top-k only: the k largest logits of each row (ties kept)."""
    return filter_logits(logits, 1.0, k, 1.0, candidates)


def top_p_filter(logits, p, candidates: int = CANDIDATES):
    """`filter_logits` with top-p only: the nucleus of mass p of each row."""
    return filter_logits(logits, 1.0, 0, p, candidates)


_MASK32 = 0xFFFFFFFF


def _hash32(x):
    """A 32-bit integer mixer (two multiply-xorshift rounds), on int64 tensors holding uint32s.

    The multiplier is below 2**31, so no product overflows int64.
    """
    for _ in range(2):
        x = _and(_xor(_shr(x, 16), x) * 0x45D9F3B, _MASK32)
    return _xor(_shr(x, 16), x)


def _and(x, y):
    return tf.bitwise.bitwise_and(x, tf.constant(y, tf.int64))


def _xor(x, y):
    return tf.bitwise.bitwise_xor(x, y)


def _shr(x, n):
    return tf.bitwise.right_shift(x, tf.constant(n, tf.int64))


def gumbel_noise(token_ids, seed, step):
    """Gumbel(0, 1) noise for each (row, token id): a pure function of (seed, step, row, id).

    A counter-based generator in plain integer ops, so that eager, graph and XLA execution on any
    device give the same numbers, and noise can be drawn for a few candidate tokens only: XLA's
    Philox took 30 ms per 8 x 50257 draws on this CPU, and TensorFlow's CPU kernels lack
    threefry. 24 random bits per draw.

    Args:
      token_ids: int [batch, n], the tokens of each row to draw noise for.
      seed: int64 [2]; step: int scalar.
    """
    seed = tf.cast(seed, tf.int64)
    key = _hash32(_and(seed[0], _MASK32))
    key = _hash32(_xor(key, _and(seed[1], _MASK32)))
    key = _hash32(_xor(key, _and(tf.cast(step, tf.int64), _MASK32)))
    row = tf.range(tf.shape(token_ids, out_type=tf.int64)[0])[:, None]  # [batch, 1]
    index = row * 2**20 + tf.cast(token_ids, tf.int64)  # vocabularies up to 2**20 tokens
    bits = _hash32(_xor(_hash32(_xor(_and(index, _MASK32), key)), key))
    u = (tf.cast(_shr(bits, 8), tf.float32) + 0.5) / 2.0**24  # uniform in (0, 1)
    return -tf.math.log(-tf.math.log(u))


def choose_tokens(logits, temperature, top_k, top_p, seed, step=0, candidates=CANDIDATES):
    """One token per row: greedy (argmax) where temperature == 0, else a filtered random draw.

    The draw is the Gumbel-max trick, argmax(filtered logits + Gumbel noise), which samples
    exactly from softmax(filtered logits) (Gumbel 1954; Maddison et al. 2014) and, unlike
    tf.random.categorical, compiles under XLA. When the filters' survivors lie among the top
    `candidates` logits, noise is drawn for those only; the token drawn is the same either way.

    Args:
      logits: [batch, vocab].
      temperature, top_k, top_p: scalar tensors.
      seed: int64 [2] tensor, the key of this batch.
      step: int scalar, the decoding step (the noise is a function of seed, step, row, token).
    Returns:
      int32 [batch].
    """
    logits = tf.cast(logits, tf.float32)
    temperature = tf.convert_to_tensor(temperature, tf.float32)

    def draw():
        scaled, k, p = _settings(logits, temperature, top_k, top_p)
        vocab_ids = tf.broadcast_to(tf.range(shape_list(logits)[1]), tf.shape(logits))

        def over_all(threshold):
            noisy = _mask_below(scaled, threshold) + gumbel_noise(vocab_ids, seed, step)
            return tf.argmax(noisy, axis=-1, output_type=tf.int32)

        def filtered():
            n = min(candidates, logits.shape[-1])
            values, indices = _top(scaled, n)
            threshold, exact = _thresholds(scaled, values, k, p)
            # Every survivor is a candidate (no tie with the threshold just past them).
            exact &= (n == logits.shape[-1]) | tf.reduce_all(values[:, -1:] < threshold)

            def among_candidates():
                noisy = _mask_below(values, threshold) + gumbel_noise(indices, seed, step)
                best = tf.argmax(noisy, axis=-1, output_type=tf.int32)[:, None]  # [batch, 1]
                chosen = tf.range(n)[None, :] == best  # a mask, not a gather (see _thresholds)
                return tf.reduce_sum(tf.where(chosen, indices, 0), axis=-1)

            return tf.cond(exact, among_candidates, lambda: over_all(_full_threshold(scaled, k, p)))

        no_threshold = tf.fill(tf.shape(logits[:, :1]), NEG_INF)
        return tf.cond((k > 0) | (p < 1.0), filtered, lambda: over_all(no_threshold))

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    return tf.cond(temperature > 0, draw, greedy)


def prefill(model, context, prompt_len, cache_len: int):
    """Run the prompt through `model`: (logits after its last token [batch, vocab], cache).

    Args:
      model: callable `model(tokens, cache, pos, logits_at) -> {"logits", "cache"}` with
        `model.init_cache(batch, max_len)`; a `GPT2`, or a stub in tests.
      context: int32 [batch, P], the prompt in its first `prompt_len` columns; the rest is padding.
      prompt_len: int32 scalar in 1 .. P.
      cache_len: Python int, the cache's length: at least P and prompt_len + length - 1.
    """
    # Padding after the prompt is written to the cache too, but each position is overwritten by
    # its real token before any query can see it (queries see keys at positions <= their own).
    cache = model.init_cache(shape_list(context)[0], cache_len)
    out = model(context, cache, 0, logits_at=prompt_len - 1)
    return out["logits"][:, -1], out["cache"]


def continue_decode(
    model, logits, cache, prompt_len, length, temperature, top_k, top_p, seed, stop_token, slots
):
    """The decode loop after `prefill`: `length` tokens, drawn from `logits` first.

    Every shape depends only on the cache's shape and `slots`, never on the prompt's or the
    generation's actual length, so one XLA compilation serves every prompt and length that fit
    (the caller rounds both up to a few bucket sizes).

    Args:
      model, prompt_len: as for `prefill`; logits, cache: what it returned.
      length: int32 scalar in 1 .. slots: tokens to generate.
      temperature, top_k, top_p: scalar tensors (see `choose_tokens`).
      seed: int64 [2], the RNG key of this batch (step i uses `gumbel_noise(.., seed, i)`).
      stop_token: int32 scalar; once a row emits it, the row emits only it. -1 disables.
      slots: Python int, the width of the result.
    Returns:
      int32 [batch, slots]: `length` tokens per row, then stop_token; rows are padded with
      stop_token after they emitted it.
    """
    batch = shape_list(logits)[0]
    columns = tf.range(slots)

    def pick(logits, step, done):
        token = choose_tokens(logits, temperature, top_k, top_p, seed, step)
        return tf.where(done, stop_token, token)  # [batch]

    def place(tokens, token, step):
        return tf.where(columns[None, :] == step, token[:, None], tokens)  # [batch, slots]

    def cond(step, logits, cache, tokens, done):
        return (step < length) & ~tf.reduce_all(done)

    def body(step, logits, cache, tokens, done):
        # One token from the logits at hand, then the model's logits after it: the sampling code
        # is traced and compiled once, not once more for a first token before the loop. After
        # the last token there is nothing to predict, and its position may lie past the context.
        token = pick(logits, step, done)

        def forward():
            out = model(token[:, None], cache, prompt_len + step, logits_at=0)
            return out["logits"][:, -1], out["cache"]

        logits, cache = tf.cond(step + 1 < length, forward, lambda: (logits, cache))
        return step + 1, logits, cache, place(tokens, token, step), done | (token == stop_token)

    tokens = tf.fill([batch, slots], stop_token)
    loop_vars = (tf.constant(0), logits, cache, tokens, tf.zeros([batch], tf.bool))
    return tf.while_loop(cond, body, loop_vars)[3]


def decode(
    model,
    context,
    prompt_len,
    length,
    temperature,
    top_k,
    top_p,
    seed,
    stop_token,
    slots,
    cache_len=None,
):
    """`prefill`, then `continue_decode`: up to `slots` tokens after a (padded) prompt.

    cache_len defaults to P + slots. Returns int32 [batch, slots] (see `continue_decode`).
    """
    cache_len = cache_len or shape_list(context)[1] + slots
    logits, cache = prefill(model, context, prompt_len, cache_len)
    return continue_decode(
        model, logits, cache, prompt_len, length, temperature, top_k, top_p, seed, stop_token, slots
    )
