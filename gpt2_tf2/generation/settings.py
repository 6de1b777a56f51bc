"""Decoding settings: one structure of tensors that travels into the compiled loop.

Every field is a tensor, so a new temperature, seed or stop token never retraces or recompiles;
a new setting (a repetition penalty) is a field of `config.GenerationConfig` with a tensor dtype,
one line here, and one more processor.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from gpt2_tf2.generation.config import TENSORS, GenerationConfig


class Settings(NamedTuple):
    """The loop's tensors: `config.TENSORS` (the `GenerationConfig` fields that travel as
    tensors, with their dtypes), the sampler's key and the stop token."""

    temperature: tf.Tensor  # float32 scalar; 0 = greedy
    top_k: tf.Tensor  # int32 scalar; 0 = off
    top_p: tf.Tensor  # float32 scalar in (0, 1]; 1 = off
    seed: tf.Tensor  # int64 [2], the RNG key of a batch: step i draws gumbel_noise(.., seed, i)
    stop_token: tf.Tensor  # int32 scalar; once a row emits it, it emits only it; -1 = none
    repetition_penalty: tf.Tensor  # float32 scalar > 0; 1 = off (CTRL's penalty)
    no_repeat_ngram_size: tf.Tensor  # int32 scalar; 0 = off
    presence_penalty: tf.Tensor  # float32 scalar; 0 = off (OpenAI's)
    frequency_penalty: tf.Tensor  # float32 scalar; 0 = off (OpenAI's)
    min_new_tokens: tf.Tensor  # int32 scalar; 0 = off

    @classmethod
    def make(cls, config=None, key=(0, 0), stop_token=-1, **settings) -> Settings:
        """The tensors of `config` (a `GenerationConfig`; keywords replace its fields), with the
        sampler's key (seed, batch index) and the stop token (-1: none)."""
        config = GenerationConfig.of(config, **settings)
        values = {
            name: tf.constant(getattr(config, name), dtype) for name, dtype in TENSORS.items()
        }
        return cls(
            seed=tf.constant(key, tf.int64), stop_token=tf.constant(int(stop_token)), **values
        )

    @classmethod
    def rows(cls, settings: list[Settings]) -> Settings:
        """Rows' own settings as one: each field stacked ([batch], the key [batch, 2]), as the
        processors and strategies take them (`processors.per_row`)."""
        return cls(*(tf.stack(fields) for fields in zip(*settings)))


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
