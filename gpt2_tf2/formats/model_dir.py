"""One way in for every model directory: find it by name, tell its format, read its hparams and
vocabulary with the checks in one place, and load its weights.

Sampling, scoring, training and export all go through `open_model_dir` (no weights read) and
`load_weights` / `load_model_dir`. Formats today: OpenAI's TF1 layout (`openai.py`: a release,
or an export), and a fine-tuning run's newest checkpoint (`run.py`). A new format is one module
with a reader, and one more branch in `ModelDir.format`.

Finding a directory and reading its hparams and vocabulary need no TensorFlow; the checkpoint
formats (TensorFlow reads checkpoints) are imported when a checkpoint is first read
(`core.lazy`): the tflite backend runs a cached conversion without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import TYPE_CHECKING

from gpt2_tf2.core import lazy
from gpt2_tf2.core.hparams import ALIASES, PRESETS, HParams, canonical_name, load_hparams
from gpt2_tf2.errors import UserError
from gpt2_tf2.tokenizer import Encoder, load_encoder, vocabulary_files

if TYPE_CHECKING:
    from gpt2_tf2.core.model import GPT2

FORMATS = ("openai", "run")


def checkpoint_formats():
    """The modules that read checkpoints (`openai`, `run`), TensorFlow imported first."""
    lazy.tensorflow()
    from gpt2_tf2.formats import openai, run

    return openai, run


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """What a model directory holds, read and checked, before any weight is loaded."""

    path: str
    hparams: HParams
    encoder: Encoder

    @functools.cached_property
    def checkpoint(self) -> str:
        """The checkpoint prefix the weights are read from."""
        return checkpoint_formats()[0].find_checkpoint(self.path)

    @functools.cached_property
    def format(self) -> str:
        """One of FORMATS, told by the checkpoint's variable names."""
        return "run" if checkpoint_formats()[1].is_run_checkpoint(self.checkpoint) else "openai"

    @property
    def vocabulary_files(self) -> dict[str, str]:
        """The vocabulary's files, for a copy of this model to carry."""
        return vocabulary_files(self.path)


def open_model_dir(path: str) -> ModelDir:
    """Read and check a model directory's hparams and vocabulary (no weights, no checkpoint)."""
    hparams = load_hparams(path)
    encoder = load_encoder(path)
    if encoder.n_vocab != hparams.n_vocab:
        raise UserError(
            f"{path}: the vocabulary has {encoder.n_vocab} tokens but hparams.json "
            f"says n_vocab={hparams.n_vocab}"
        )
    return ModelDir(path, hparams, encoder)


def load_weights(model_dir: ModelDir, model: GPT2) -> None:
    """Assign every variable of `model` (built from `model_dir.hparams`) from the directory."""
    openai, run = checkpoint_formats()
    if model_dir.format == "run":
        run.load_run_weights(model, model_dir.checkpoint)
    else:
        openai.load_openai_checkpoint(model, model_dir.checkpoint)


def read_weights(model_dir: ModelDir):
    """The weights by OpenAI name, for work that takes them one at a time (a conversion): an
    OpenAI-layout checkpoint is read a weight at a time (`openai.CheckpointWeights`); a run's
    checkpoint is restored into a model first."""
    openai = checkpoint_formats()[0]
    if model_dir.format == "run":
        return load_model_dir(model_dir.path)[1].named_variables()
    return openai.CheckpointWeights(model_dir.checkpoint, model_dir.hparams)


def load_model_dir(path: str, dtype="float32") -> tuple[ModelDir, GPT2]:
    """(what the directory holds, the model with its weights) with weights and activations in
    `dtype` (layer norms, softmax and logits stay float32)."""
    tf = lazy.tensorflow()
    from gpt2_tf2.core.model import GPT2

    model_dir = open_model_dir(path)
    dtype = tf.as_dtype(dtype)
    if model_dir.format == "run" and dtype != tf.float32:
        model = GPT2(model_dir.hparams, seed=None)  # tf.train restores float32 variables only
        load_weights(model_dir, model)
        return model_dir, cast_model(model, dtype)
    # Straight into the target dtype, one variable at a time: no float32 copy of the whole model.
    model = GPT2(model_dir.hparams, seed=None, compute_dtype=dtype, param_dtype=dtype)
    load_weights(model_dir, model)
    return model_dir, model


def cast_model(model: GPT2, dtype) -> GPT2:
    """A copy of `model` whose weights and activations are `dtype` (layer norms, softmax and
    logits stay float32); the weights are cast once, here."""
    tf = lazy.tensorflow()
    from gpt2_tf2.core.model import GPT2

    openai = checkpoint_formats()[0]
    cast = GPT2(model.hparams, seed=None, compute_dtype=dtype, param_dtype=dtype)
    source = openai.name_table(model)
    for name, var in openai.name_table(cast).items():
        var.assign(tf.cast(source[name], dtype))
    return cast


def resolve_model_dir(model_name: str, models_dir: str = "models") -> str:
    """The directory of a model: a path as given, else `models_dir/model_name` (aliases allowed)."""
    model_name = str(model_name)
    if os.path.isdir(model_name):
        return model_name
    candidates = [os.path.join(models_dir, model_name)]
    release = canonical_name(model_name)
    if release and release != model_name:
        candidates.append(os.path.join(models_dir, release))
    for path in candidates:
        if os.path.isdir(path):
            return path
    if release is None:
        names = ", ".join(list(PRESETS) + list(ALIASES))
        raise UserError(
            f"unknown model {model_name!r}: not a directory, and not a release name "
            f"({names}) under {models_dir}/"
        )
    raise UserError(
        f"model directory {candidates[-1]} not found; download it with: "
        f"python -m gpt2_tf2.download {release} --models_dir {models_dir}"
    )


def find_model_dir(model_name: str, models_dir: str = "models", download: bool = False) -> str:
    """`resolve_model_dir`, fetching a missing release first when `download` is set.

    A release directory left incomplete by an interrupted download is completed (resumed), not
    taken as it is.
    """
    from gpt2_tf2.formats.download import APPROX_SIZE, FILES, download_model

    release = canonical_name(str(model_name))
    try:
        model_dir = resolve_model_dir(model_name, models_dir)
    except UserError:
        if not (download and release):
            raise
        missing = FILES
    else:
        in_models_dir = os.path.dirname(os.path.normpath(model_dir)) == os.path.normpath(models_dir)
        missing = [f for f in FILES if not os.path.exists(os.path.join(model_dir, f))]
        if not missing or not (download and release and in_models_dir):
            return model_dir  # offline, a directory without model.ckpt.meta still loads
    if len(missing) == len(FILES):
        size = APPROX_SIZE[release]
        print(f"{release} is not in {models_dir}/: downloading it (about {size})", file=sys.stderr)
    else:
        print(f"{model_dir} lacks {', '.join(missing)}: fetching", file=sys.stderr)
    return download_model(release, models_dir)


def locate(
    model_name: str = "124M",
    models_dir: str = "models",
    download: bool = False,
    run_name: str | None = None,
    checkpoint_dir: str = "checkpoint",
) -> str:
    """The directory the commands' model flags name: a run's (`run_name`), else a model's."""
    if run_name is not None:
        return checkpoint_formats()[1].locate_run(run_name, checkpoint_dir)
    return find_model_dir(model_name, models_dir, download)
