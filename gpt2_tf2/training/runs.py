"""Run directories: `checkpoint/<run_name>/` with tf.train checkpoints of a fine-tuning run.

A run directory holds `ckpt-<step>.{index,data-*}` written by `tf.train.CheckpointManager` (model,
optimizer slots and iterations, global step), a `checkpoint` state file, `run.json` (optimizer and
settings the checkpoints need), and copies of the base model's `hparams.json` and vocabulary, so
the run is self-contained and `formats` reads it like any model directory. TensorFlow writes
each checkpoint under temporary names and updates the state file last, so a kill at any moment
leaves the newest complete checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf

from gpt2_tf2.core.hparams import HParams, load_hparams, save_hparams
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats import model_dir as formats
from gpt2_tf2.formats.openai import write_model_dir
from gpt2_tf2.formats.run import latest, locate_run, run_dir  # noqa: F401 (run_dir: the API)


def make_manager(trainer, directory: str) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager]:
    ckpt = tf.train.Checkpoint(
        model=trainer.model,
        optimizer=trainer.optimizer,
        step=trainer.step,
        loss_scale=trainer.loss_scale,
        good_steps=trainer.good_steps,
    )
    manager = tf.train.CheckpointManager(
        ckpt, directory, max_to_keep=5, keep_checkpoint_every_n_hours=2, checkpoint_name="ckpt"
    )
    return ckpt, manager


def prepare(directory: str, base: formats.ModelDir, info: dict) -> None:
    """Create the run directory; copy the base model's vocabulary and hparams."""
    os.makedirs(directory, exist_ok=True)
    check_hparams(directory, base.hparams)
    save_hparams(base.hparams, os.path.join(directory, "hparams.json"))
    for name, path in base.vocabulary_files.items():
        shutil.copyfile(path, os.path.join(directory, name))
    with open(os.path.join(directory, "run.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)


def check_hparams(directory: str, hparams: HParams) -> None:
    """A run directory belongs to one model shape: refuse to mix in another."""
    existing = os.path.join(directory, "hparams.json")
    if os.path.exists(existing) and load_hparams(existing) != hparams:
        raise UserError(
            f"{directory} holds a run of a model with other hparams ({load_hparams(existing)}); "
            f"use another --run_name or the run's base model"
        )


def read_info(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "run.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def restore(ckpt: tf.train.Checkpoint, path: str, strict: bool = True) -> None:
    """Restore a training checkpoint; `strict`: every saved and every live object must match."""
    try:
        status = ckpt.restore(path)
        if strict:
            status.assert_consumed()
        else:
            status.expect_partial()
    except AssertionError as e:
        raise UserError(
            f"{path}: does not match this run's model or optimizer ({str(e)[:200]}); "
            f"use the same --optimizer and --only_train_transformer_layers, or "
            f"--restore_from fresh"
        ) from None
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{path}: cannot restore checkpoint ({str(e).splitlines()[0]})") from None


def starting_point(restore_from: str, newest: str | None, model_dir: str):
    """Where a run starts: (training checkpoint to restore or None, base model directory).

    restore_from: 'latest' (`newest`, this run's newest checkpoint, if any), 'fresh' (the base
    model), or a path: a training checkpoint, a run directory, or an OpenAI-layout model
    directory (whose weights then replace the base model's).
    """
    if restore_from == "latest":
        return newest, model_dir
    if restore_from == "fresh":
        return None, model_dir
    path = str(restore_from)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "model.ckpt.index")):
        return None, path
    source = latest(path) if os.path.isdir(path) else path
    if source is None or not os.path.exists(source + ".index"):
        raise UserError(f"--restore_from {path}: no training checkpoint there")
    return source, model_dir


def export(run_name: str, out: str, checkpoint_dir: str = "checkpoint") -> str:
    """Write a run's newest weights as an OpenAI-layout model directory, atomically."""
    directory = locate_run(run_name, checkpoint_dir)
    opened, model = formats.load_model_dir(directory)
    write_model_dir(model, opened.hparams, opened.vocabulary_files, out)
    return opened.checkpoint
