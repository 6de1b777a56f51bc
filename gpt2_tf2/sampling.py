"""Sampling: pure logit filters and one compiled decode loop over a fixed-shape cache.

Mirrors openai/gpt-2's `src/sample.py` (temperature, then top-k, then top-p, then a categorical
draw), fixing its bugs: top-p compares each row against its own threshold (the original broadcast a
[batch] threshold across the vocabulary, wrong at batch > 1), the token that crosses the
threshold is kept (Holtzman et al. 2019, nucleus sampling), top-k and top-p combine, temperature 0
is greedy. Settings are tensors, so changing them never retraces; randomness is stateless,
keyed by (seed, step), so the same seed gives the same samples.
"""

from __future__ import annotations

import tensorflow as tf

NEG_INF = float("-inf")


def top_k_filter(logits, k):
    """Keep the k largest logits of each row (ties with the k-th kept); k == 0 keeps all.

    Args:
      logits: [batch, vocab] float.
      k: int scalar tensor.
    """
    k = tf.convert_to_tensor(k, tf.int32)

    def keep_top_k():
        kth = tf.math.top_k(logits, k=k).values[:, -1:]  # [batch, 1]
        return tf.where(logits < kth, tf.cast(NEG_INF, logits.dtype), logits)

    return tf.cond(k > 0, keep_top_k, lambda: logits)


def top_p_filter(logits, p):
    """Keep the smallest set of most likely tokens whose probability reaches p, per row.

    A token is kept if the probability mass of the tokens strictly more likely than it is below p,
    so the token that crosses the threshold stays; p >= 1 keeps all.

    Args:
      logits: [batch, vocab] float.
      p: float scalar tensor in (0, 1].
    """
    p = tf.convert_to_tensor(p, logits.dtype)

    def keep_nucleus():
        sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)  # [batch, vocab]
        mass_before = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1, exclusive=True)
        kept = tf.where(mass_before < p, sorted_logits, tf.cast(float("inf"), logits.dtype))
        threshold = tf.reduce_min(kept, axis=-1, keepdims=True)  # [batch, 1]: per row
        return tf.where(logits < threshold, tf.cast(NEG_INF, logits.dtype), logits)

    return tf.cond(p < 1.0, keep_nucleus, lambda: logits)


def filter_logits(logits, temperature, top_k, top_p):
    """Temperature, then top-k, then top-p, as the original orders them. temperature must be > 0."""
    logits = logits / tf.cast(temperature, logits.dtype)
    return top_p_filter(top_k_filter(logits, top_k), top_p)


def choose_tokens(logits, temperature, top_k, top_p, seed):
    """One token per row: greedy (argmax) where temperature == 0, else a filtered random draw.

    Args:
      logits: [batch, vocab].
      temperature, top_k, top_p: scalar tensors.
      seed: int64 [2] tensor, the stateless RNG key for this step.
    Returns:
      int32 [batch].
    """
    logits = tf.cast(logits, tf.float32)
    temperature = tf.convert_to_tensor(temperature, tf.float32)

    def draw():
        filtered = filter_logits(logits, temperature, top_k, top_p)
        return tf.random.stateless_categorical(filtered, 1, seed=seed, dtype=tf.int32)[:, 0]

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    return tf.cond(temperature > 0, draw, greedy)


def decode(model, context, length, temperature, top_k, top_p, seed, stop_token):
    """Generate `length` tokens after `context`: the decode loop, to be called inside a tf.function.

    Args:
      model: callable `model(tokens, cache, pos, last_only=True) -> {"logits", "cache"}` with
        `model.init_cache(batch, max_len)`; a `GPT2`, or a stub in tests.
      context: int32 [batch, prompt_len], at least one token per row.
      length: int32 scalar, tokens to generate (>= 1).
      temperature, top_k, top_p: scalar tensors (see `choose_tokens`).
      seed: int64 [2], the RNG key of this batch; step i uses fold_in(seed, i).
      stop_token: int32 scalar; once a row emits it, the row emits only it. -1 disables.
    Returns:
      int32 [batch, length], rows padded with stop_token after it was emitted.
    """
    batch = tf.shape(context)[0]
    prompt_len = tf.shape(context)[1]
    # The last generated token is never fed back, so prompt_len + length - 1 positions suffice.
    cache = model.init_cache(batch, prompt_len + length - 1)
    out = model(context, cache, 0, last_only=True)
    columns = tf.range(length)

    def pick(logits, step, done):
        step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))
        token = choose_tokens(logits[:, -1], temperature, top_k, top_p, step_seed)
        return tf.where(done, stop_token, token)  # [batch]

    def place(tokens, token, step):
        return tf.where(columns[None, :] == step, token[:, None], tokens)  # [batch, length]

    done = tf.zeros([batch], tf.bool)
    token = pick(out["logits"], 0, done)
    tokens = place(tf.fill([batch, length], stop_token), token, 0)
    done = token == stop_token

    def cond(step, token, cache, tokens, done):
        return (step < length) & ~tf.reduce_all(done)

    def body(step, token, cache, tokens, done):
        out = model(token[:, None], cache, prompt_len + step - 1, last_only=True)
        token = pick(out["logits"], step, done)
        return (
            step + 1,
            token,
            out["cache"],
            place(tokens, token, step),
            done | (token == stop_token),
        )

    _, _, _, tokens, _ = tf.while_loop(
        cond,
        body,
        (tf.constant(1), token, out["cache"], tokens, done),
        shape_invariants=(
            tf.TensorShape([]),
            tf.TensorShape([None]),
            [tf.TensorShape(c.shape) for c in out["cache"]],
            tf.TensorShape([None, None]),
            tf.TensorShape([None]),
        ),
    )
    return tokens
