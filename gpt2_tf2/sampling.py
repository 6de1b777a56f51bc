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

from gpt2_tf2.model import shape_list

NEG_INF = float("-inf")
# Filters look for their threshold among the top CANDIDATES logits of a row first: under XLA on a
# CPU, tf.math.top_k(256) costs ~0.2 ms a row, a sort of the 50257-token vocabulary ~10 ms. A full
# sort is the fallback, taken only when top_k > CANDIDATES or the nucleus reaches past them.
CANDIDATES = 256


def _mask_below(logits, threshold):
    return tf.where(logits < threshold, tf.cast(NEG_INF, logits.dtype), logits)


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
    logits = logits / tf.cast(temperature, logits.dtype)
    vocab = logits.shape[-1] or tf.shape(logits)[-1]
    k = tf.minimum(tf.convert_to_tensor(top_k, tf.int32), vocab)
    p = tf.convert_to_tensor(top_p, logits.dtype)
    none = tf.fill(tf.shape(logits[:, :1]), tf.cast(NEG_INF, logits.dtype))  # [batch, 1]

    def thresholds(ranked):
        """From `ranked` [batch, n], each row's n largest logits in descending order: the
        combined threshold [batch, 1], and whether it is exact (the nucleus lies within them)."""
        n = ranked.shape[-1] or tf.shape(ranked)[-1]
        kth = tf.cond(
            k > 0, lambda: tf.gather(ranked, [tf.minimum(k, n) - 1], axis=-1), lambda: none
        )
        # Probabilities after top-k, normalised over the whole row, not only the ranked part.
        lse = tf.reduce_logsumexp(_mask_below(logits, kth), axis=-1, keepdims=True)
        probs = tf.exp(_mask_below(ranked, kth) - lse)  # [batch, n]
        mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
        kept = tf.where(mass_before < p, ranked, tf.cast(float("inf"), ranked.dtype))
        nucleus = tf.cond(
            p < 1.0, lambda: tf.reduce_min(kept, axis=-1, keepdims=True), lambda: none
        )
        exact = (k <= n) & ((p >= 1.0) | tf.reduce_all(tf.reduce_sum(probs, axis=-1) >= p))
        return tf.maximum(kth, nucleus), exact

    def filtered():
        threshold, exact = thresholds(tf.math.top_k(logits, min(candidates, vocab)).values)
        threshold = tf.cond(
            exact,
            lambda: threshold,
            lambda: thresholds(tf.sort(logits, direction="DESCENDING", axis=-1))[0],
        )
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


def uniform_noise(shape, seed, step):
    """Uniform floats in (0, 1), a pure function of (seed, step, element index).

    A counter-based generator in plain integer ops, so that eager, graph and XLA execution on any
    device give the same numbers and it compiles to one fused loop: XLA's Philox took 30 ms per
    8 x 50257 draws on this CPU, and TensorFlow's CPU kernels lack threefry. 24 bits per draw.

    Args:
      shape: [rows, cols] (Python ints or scalar tensors).
      seed: int64 [2]; step: int scalar.
    """
    seed = tf.cast(seed, tf.int64)
    key = _hash32(_and(seed[0], _MASK32))
    key = _hash32(_xor(key, _and(seed[1], _MASK32)))
    key = _hash32(_xor(key, _and(tf.cast(step, tf.int64), _MASK32)))
    count = tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)
    index = tf.reshape(tf.range(count, dtype=tf.int64), shape)  # [rows, cols]
    bits = _hash32(_xor(_hash32(_xor(index, key)), key))
    return (tf.cast(_shr(bits, 8), tf.float32) + 0.5) / 2.0**24


def choose_tokens(logits, temperature, top_k, top_p, seed, step=0):
    """One token per row: greedy (argmax) where temperature == 0, else a filtered random draw.

    The draw is the Gumbel-max trick, argmax(logits + Gumbel noise), which samples exactly from
    softmax(logits) (Gumbel 1954; Maddison et al. 2014) and, unlike tf.random.categorical,
    compiles under XLA.

    Args:
      logits: [batch, vocab].
      temperature, top_k, top_p: scalar tensors.
      seed: int64 [2] tensor, the key of this batch.
      step: int scalar, the decoding step (the noise is a function of seed and step).
    Returns:
      int32 [batch].
    """
    logits = tf.cast(logits, tf.float32)
    temperature = tf.convert_to_tensor(temperature, tf.float32)

    def draw():
        filtered = filter_logits(logits, temperature, top_k, top_p)
        u = uniform_noise(shape_list(logits), seed, step)
        return tf.argmax(filtered - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32)

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    return tf.cond(temperature > 0, draw, greedy)


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
    """Generate up to `slots` tokens after a prompt: the decode loop, to run inside a tf.function.

    Every shape depends only on context's shape and `slots`, never on the prompt's or the
    generation's actual length, so one XLA compilation serves every prompt and length that fit
    (the caller rounds both up to a few bucket sizes).

    Args:
      model: callable `model(tokens, cache, pos, logits_at) -> {"logits", "cache"}` with
        `model.init_cache(batch, max_len)`; a `GPT2`, or a stub in tests.
      context: int32 [batch, P], the prompt in its first `prompt_len` columns; the rest is padding.
      prompt_len: int32 scalar in 1 .. P.
      length: int32 scalar in 1 .. slots: tokens to generate.
      temperature, top_k, top_p: scalar tensors (see `choose_tokens`).
      seed: int64 [2], the RNG key of this batch (step i draws `uniform_noise(.., seed, i)`).
      stop_token: int32 scalar; once a row emits it, the row emits only it. -1 disables.
      slots: Python int, the width of the result.
      cache_len: Python int, the key/value cache's length: at least P and prompt_len + length - 1
        for every call (default P + slots; a model's context length is enough).
    Returns:
      int32 [batch, slots]: `length` tokens per row, then stop_token; rows are padded with
      stop_token after they emitted it.
    """
    batch = shape_list(context)[0]
    # Padding after the prompt is written to the cache too, but each position is overwritten by
    # its real token before any query can see it (queries see keys at positions <= their own).
    cache = model.init_cache(batch, cache_len or shape_list(context)[1] + slots)
    out = model(context, cache, 0, logits_at=prompt_len - 1)
    columns = tf.range(slots)

    def pick(logits, step, done):
        token = choose_tokens(logits[:, -1], temperature, top_k, top_p, seed, step)
        return tf.where(done, stop_token, token)  # [batch]

    def place(tokens, token, step):
        return tf.where(columns[None, :] == step, token[:, None], tokens)  # [batch, slots]

    done = tf.zeros([batch], tf.bool)
    token = pick(out["logits"], 0, done)
    tokens = place(tf.fill([batch, slots], stop_token), token, 0)
    done = token == stop_token

    def cond(step, token, cache, tokens, done):
        return (step < length) & ~tf.reduce_all(done)

    def body(step, token, cache, tokens, done):
        out = model(token[:, None], cache, prompt_len + step - 1, logits_at=0)
        token = pick(out["logits"], step, done)
        return (
            step + 1,
            token,
            out["cache"],
            place(tokens, token, step),
            done | (token == stop_token),
        )

    _, _, _, tokens, _ = tf.while_loop(
        cond, body, (tf.constant(1), token, out["cache"], tokens, done)
    )
    return tokens
