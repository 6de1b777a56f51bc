"""The token history processors read: what a decode loop has so far, per row."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class History(NamedTuple):
    """The tokens so far, prompt then output, for processors to read: tokens[b, start[b]:length]
    (a mixed-length batch is left-padded: row b's prompt begins at column start[b]); the output
    is tokens[b, output[b]:length]."""

    tokens: tf.Tensor  # int32 [batch, T]
    length: tf.Tensor  # int32 scalar, or [batch]: each row's own (a decode engine's slots)
    start: tf.Tensor | int = 0  # int32 [batch] (or 0 for every row)
    output: tf.Tensor | int | None = None  # int32 scalar or [batch]; None: from `start` on

    def generated(self):
        """int32 scalar or [batch]: how many tokens the output holds so far."""
        first = self.start if self.output is None else self.output
        return tf.convert_to_tensor(self.length, tf.int32) - tf.convert_to_tensor(first, tf.int32)

    def output_valid(self):
        """bool [batch, T]: the columns that hold the row's output so far."""
        if self.output is None:
            return self.valid()
        columns = tf.range(tf.shape(self.tokens)[1])[None, :]
        first = tf.convert_to_tensor(self.output, tf.int32)
        first = first[:, None] if first.shape.rank == 1 else first
        return self.valid() & (columns >= first)

    def valid(self):
        """bool [batch, T]: the columns that hold the row's tokens so far."""
        columns = tf.range(tf.shape(self.tokens)[1])[None, :]  # [1, T]
        start = tf.reshape(tf.convert_to_tensor(self.start, tf.int32), [-1, 1])  # [batch or 1, 1]
        length = tf.convert_to_tensor(self.length, tf.int32)
        if length.shape.rank == 1:
            length = length[:, None]
        return tf.broadcast_to((columns < length) & (columns >= start), tf.shape(self.tokens))
