"""A fine-tuning run directory read as a model: its newest `tf.train` checkpoint's weights.

`checkpoint/<run_name>/` holds object-based checkpoints `ckpt-<step>` written by
`tf.train.CheckpointManager` (the model under `model/...`, with the optimizer and step beside it),
a `checkpoint` state file naming the newest, and copies of the base model's `hparams.json` and
vocabulary. Reading one needs the model's variables only; `training.runs` owns writing them.
"""

from __future__ import annotations

import os

import tensorflow as tf

from gpt2_tf2.errors import UserError, first_line
from gpt2_tf2.files import check_run_name
from gpt2_tf2.formats.openai import named_checkpoint


def run_dir(run_name: str, checkpoint_dir: str = "checkpoint") -> str:
    """checkpoint_dir/run_name, once the run name is checked (`check_run_name`)."""
    return os.path.join(str(checkpoint_dir), check_run_name(run_name))


def latest(directory: str) -> str | None:
    """The newest checkpoint prefix the directory's `checkpoint` state file names, or None."""
    try:
        return named_checkpoint(directory)
    except UserError:
        return None


def locate_run(run_name: str, checkpoint_dir: str = "checkpoint") -> str:
    """The directory of a run that has saved a checkpoint, or one line saying what is missing."""
    directory = run_dir(run_name, checkpoint_dir)
    if not os.path.isdir(directory):
        raise UserError(
            f"run directory {directory} not found; check `run_name` and `checkpoint_dir`"
        )
    if latest(directory) is None:
        raise UserError(f"{directory}: no checkpoint saved yet")
    return directory


def is_run_checkpoint(prefix: str) -> bool:
    """Whether the checkpoint at `prefix` is object-based (a run's), not OpenAI's TF1 names."""
    try:
        names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except Exception:  # unreadable: let the OpenAI reader say what is wrong with it
        return False
    return any("/.ATTRIBUTES/" in name for name in names)


def load_run_weights(model, prefix: str) -> None:
    """Assign the model's variables from a run's checkpoint (its optimizer state is skipped)."""
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{prefix}: cannot restore checkpoint ({first_line(e)})") from None
