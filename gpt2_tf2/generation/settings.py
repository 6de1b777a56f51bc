"""Decoding settings: one structure of arrays that travels into the compiled loop.

Every field is an array (a tensor inside a compiled function), so a new temperature, seed or
stop token never retraces or recompiles; a new setting (a repetition penalty) is a field of
`config.GenerationConfig` with a tensor dtype, one line here, and one more processor.

NumPy, not TensorFlow: a tf.function takes a NumPy array as the tensor of its shape and dtype
(the same trace), and the tflite backend's greedy decoding reads them without TensorFlow being
imported at all (`generation.tflite`: a first call without TensorFlow's seconds of import).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gpt2_tf2.generation.config import TENSORS, GenerationConfig


class Settings(NamedTuple):
    """The loop's arrays: `config.TENSORS` (the `GenerationConfig` fields that travel as
    tensors, with their dtypes), the sampler's key and the stop token."""

    temperature: np.ndarray  # float32 scalar; 0 = greedy
    top_k: np.ndarray  # int32 scalar; 0 = off
    top_p: np.ndarray  # float32 scalar in (0, 1]; 1 = off
    seed: np.ndarray  # int64 [2], the RNG key of a batch: step i draws gumbel_noise(.., seed, i)
    stop_token: np.ndarray  # int32 scalar; once a row emits it, it emits only it; -1 = none
    repetition_penalty: np.ndarray  # float32 scalar > 0; 1 = off (CTRL's penalty)
    no_repeat_ngram_size: np.ndarray  # int32 scalar; 0 = off
    presence_penalty: np.ndarray  # float32 scalar; 0 = off (OpenAI's)
    frequency_penalty: np.ndarray  # float32 scalar; 0 = off (OpenAI's)
    min_new_tokens: np.ndarray  # int32 scalar; 0 = off

    @classmethod
    def make(cls, config=None, key=(0, 0), stop_token=-1, **settings) -> Settings:
        """The arrays of `config` (a `GenerationConfig`; keywords replace its fields), with the
        sampler's key (seed, batch index) and the stop token (-1: none)."""
        config = GenerationConfig.of(config, **settings)
        values = {name: np.asarray(getattr(config, name), dtype) for name, dtype in TENSORS.items()}
        return cls(
            seed=np.asarray(key, np.int64),
            stop_token=np.asarray(int(stop_token), np.int32),
            **values,
        )

    @classmethod
    def rows(cls, settings: list[Settings]) -> Settings:
        """Rows' own settings as one: each field stacked ([batch], the key [batch, 2]), as the
        processors and strategies take them (`processors.per_row`)."""
        return cls(*(np.stack([np.asarray(f) for f in fields]) for fields in zip(*settings)))


# Each processor's setting and the value that turns it off (`processors.PROCESSORS`).
OFF = {
    "min_new_tokens": 0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "no_repeat_ngram_size": 0,
}


def every_processor_off(settings: Settings) -> bool:
    """Whether the processors leave every row's logits as they are (settings read once, outside
    any compiled function): then greedy decoding is the argmax of the model's logits."""
    return all(
        bool(np.all(np.asarray(getattr(settings, name)) == off)) for name, off in OFF.items()
    )
