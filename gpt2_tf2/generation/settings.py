"""Decoding settings: one structure of tensors that travels into the compiled loop.

Every field is a tensor, so a new temperature, seed or stop token never retraces or recompiles;
a new field (a repetition penalty) is one more line here and one more processor.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class Settings(NamedTuple):
    temperature: tf.Tensor  # float32 scalar; 0 = greedy
    top_k: tf.Tensor  # int32 scalar; 0 = off
    top_p: tf.Tensor  # float32 scalar in (0, 1]; 1 = off
    seed: tf.Tensor  # int64 [2], the RNG key of a batch: step i draws gumbel_noise(.., seed, i)
    stop_token: tf.Tensor  # int32 scalar; once a row emits it, it emits only it; -1 = none
    repetition_penalty: tf.Tensor  # float32 scalar > 0; 1 = off (CTRL's penalty)
    no_repeat_ngram_size: tf.Tensor  # int32 scalar; 0 = off

    @classmethod
    def make(
        cls,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        seed=(0, 0),
        stop_token=-1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    ) -> Settings:
        return cls(
            tf.constant(float(temperature)),
            tf.constant(int(top_k)),
            tf.constant(float(top_p)),
            tf.constant(seed, tf.int64),
            tf.constant(int(stop_token)),
            tf.constant(float(repetition_penalty)),
            tf.constant(int(no_repeat_ngram_size)),
        )


class History(NamedTuple):
    """The tokens so far, prompt then output, for processors to read: tokens[b, start[b]:length]
    (a mixed-length batch is left-padded: row b's prompt begins at column start[b])."""

    tokens: tf.Tensor  # int32 [batch, T]
    length: tf.Tensor  # int32 scalar
    start: tf.Tensor | int = 0  # int32 [batch] (or 0 for every row)

    def valid(self):
        """bool [batch, T]: the columns that hold the row's tokens so far."""
        columns = tf.range(tf.shape(self.tokens)[1])[None, :]  # [1, T]
        start = tf.reshape(tf.convert_to_tensor(self.start, tf.int32), [-1, 1])  # [batch or 1, 1]
        return tf.broadcast_to((columns < self.length) & (columns >= start), tf.shape(self.tokens))
