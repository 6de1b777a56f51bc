"""A counter-based random number generator for sampling: Gumbel noise as a pure function of
(seed, step, row, token id), the same eagerly, in a graph and under XLA on any device."""

from __future__ import annotations

import tensorflow as tf

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


def gumbel_noise(token_ids, seed, step, rows=None):
    """Gumbel(0, 1) noise for each (row, token id): a pure function of (seed, step, row, id).

    A counter-based generator in plain integer ops, so that eager, graph and XLA execution on any
    device give the same numbers, and noise can be drawn for a few candidate tokens only: XLA's
    Philox took 30 ms per 8 x 50257 draws on this CPU, and TensorFlow's CPU kernels lack
    threefry. 24 random bits per draw.

    Args:
      token_ids: int [batch, n], the tokens of each row to draw noise for.
      seed: int64 [2] (one key for the batch), or [batch, 2] (each row its own key: rows of a
        decode engine that joined at different times).
      step: int scalar, or [batch] (each row's own step).
      rows: int [batch], each row's number in its key's batch (default: its index here), so
        that a row draws the same noise wherever it runs.
    """
    seed = tf.cast(seed, tf.int64)
    step = tf.cast(step, tf.int64)
    if seed.shape.rank == 2:  # [batch, 1] keys, one per row
        seed = (seed[:, 0:1], seed[:, 1:2])
    if step.shape.rank == 1:
        step = step[:, None]
    key = _hash32(_and(seed[0], _MASK32))
    key = _hash32(_xor(key, _and(seed[1], _MASK32)))
    key = _hash32(_xor(key, _and(step, _MASK32)))
    if rows is None:
        row = tf.range(tf.shape(token_ids, out_type=tf.int64)[0])[:, None]  # [batch, 1]
    else:
        row = tf.cast(rows, tf.int64)[:, None]
    index = row * 2**20 + tf.cast(token_ids, tf.int64)  # vocabularies up to 2**20 tokens
    bits = _hash32(_xor(_hash32(_xor(_and(index, _MASK32), key)), key))
    u = (tf.cast(_shr(bits, 8), tf.float32) + 0.5) / 2.0**24  # uniform in (0, 1)
    return -tf.math.log(-tf.math.log(u))
