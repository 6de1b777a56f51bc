"""Run directories: `checkpoint/<run_name>/` with tf.train checkpoints of a fine-tuning run.

A run directory holds `ckpt-<step>.{index,data-*}` written by `tf.train.CheckpointManager` (model,
optimizer slots and iterations, global step), a `checkpoint` state file, `run.json` (optimizer and
settings the checkpoints need), and copies of the base model's `hparams.json` and vocabulary, so
the run is self-contained and `formats` reads it like any model directory. TensorFlow writes
each checkpoint under temporary names and updates the state file last, so a kill at any moment
leaves the newest complete checkpoint loadable.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil

import tensorflow as tf

from gpt2_tf2.core.hparams import HParams, load_hparams, save_hparams
from gpt2_tf2.errors import UserError, first_line
from gpt2_tf2.files import write_atomically
from gpt2_tf2.formats import model_dir as formats
from gpt2_tf2.formats.openai import check_target, write_model_dir
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
    write_json(os.path.join(directory, "run.json"), info)


def write_json(path: str, data) -> None:
    """Write whole or not at all (`files.write_atomically`)."""
    write_atomically(path, json.dumps(data, indent=2))


def check_hparams(directory: str, hparams: HParams) -> None:
    """A run directory belongs to one model shape: refuse to mix in another."""
    existing = os.path.join(directory, "hparams.json")
    if os.path.exists(existing) and load_hparams(existing) != hparams:
        raise UserError(
            f"{directory} holds a run of a model with other hparams ({load_hparams(existing)}); "
            f"use another `run_name` or the run's base model"
        )


def read_info(directory: str) -> dict:
    """run.json of a run that is being resumed: it records the seed of the run's data order."""
    path = os.path.join(directory, "run.json")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise UserError(
            f"{path} is missing; it records the run's seed: pass the run's `seed` to resume"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable ({e}); it records the run's seed: pass the run's `seed` to resume"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("seed"), int):
        raise UserError(f"{path}: no seed recorded; pass the run's `seed` to resume")
    return info


class RunLock:
    """One trainer per run directory: an OS lock (flock) on `DIR/.lock`, which holds the PID of
    its owner. The OS drops the lock when the process ends, `kill -9` included, so a lock is
    never stale."""

    def __init__(self, directory: str):
        self.directory, self.fd = directory, None
        self.path = os.path.join(directory, ".lock")

    def acquire(self) -> RunLock:
        self.created = not os.path.isdir(self.directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(
                f"{self.directory}: cannot create the run directory ({e.strerror})"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(self.fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(self.fd)
            raise UserError(
                f"{self.directory} is in use by another trainer (process {owner}); wait for it "
                f"to finish, or use another `run_name`"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def release(self) -> None:
        """Unlock; a run directory that holds nothing but the lock (a start that failed on bad
        input) is removed again when this lock created it."""
        if self.fd is None:
            return
        if self.created and os.listdir(self.directory) == [".lock"]:
            shutil.rmtree(self.directory, ignore_errors=True)
        os.close(self.fd)  # closing drops the flock
        self.fd = None


# What a run directory holds that this package wrote, by name: only these are ever removed.
# TensorFlow's sharded save writes `<prefix>_temp/part-...` (functional_saver.py: the directory
# `ckpt-N_temp` and nothing else of that name); it writes the `checkpoint` index as
# checkpoint.tmp<uuid4 hex>, then renames it (file_io.atomic_write_string_to_file): a kill
# between the two leaves that file. Our own temporaries end in `.tmp-PID`.
TEMPORARY_DIRS = re.compile(r"ckpt-\d+_temp")
TEMPORARY = re.compile(r"run\.json\.tmp-\d+|log\.tsv\.tmp-\d+|checkpoint\.tmp[0-9a-f]{32}")
CHECKPOINT = re.compile(r"ckpt-\d+\.(index|data-\d+-of-\d+)|checkpoint|run\.json|log\.tsv")
CHECKPOINT_DIRS = re.compile(r"logs")


def _remove(directory: str, files: re.Pattern, dirs: re.Pattern) -> None:
    """Remove the files whose names `files` matches whole and the directories `dirs` matches."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            if dirs.fullmatch(name):
                shutil.rmtree(path, ignore_errors=True)
        elif files.fullmatch(name):
            os.remove(path)


def remove_stale_temporaries(directory: str) -> None:
    """What a trainer killed while saving left behind: TensorFlow's `ckpt-N_temp/` shard
    directories and our temporary files. Called under the run's lock, once a start is accepted."""
    _remove(directory, TEMPORARY, TEMPORARY_DIRS)


def discard(directory: str) -> None:
    """`--overwrite`: remove what a run wrote to be resumed (its checkpoints, their index,
    run.json, the logs), and nothing else."""
    _remove(directory, CHECKPOINT, CHECKPOINT_DIRS)


def restore(ckpt: tf.train.Checkpoint, path: str, strict: bool = True) -> None:
    """Restore a training checkpoint; `strict`: every saved and every live object must match."""
    try:
        status = ckpt.restore(path)
        if strict:
            status.assert_consumed()
        else:
            status.expect_partial()
    except AssertionError:
        raise UserError(
            f"{path}: does not match this run's model or optimizer; use the run's "
            f"`optimizer` and `only_train_transformer_layers`, or export the run "
            f"(gpt2_tf2 export) and start a new `run_name` from it (`model_name` DIR)"
        ) from None
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{path}: cannot restore checkpoint ({first_line(e)})") from None


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
        raise UserError(f"`restore_from` {path}: no training checkpoint there")
    return source, model_dir


def export(
    run_name: str, out: str, checkpoint_dir: str = "checkpoint", dtype: str = "float32"
) -> str:
    """Write a run's newest weights as an OpenAI-layout model directory, atomically; stored in
    `dtype` (float16: half the disk; every reader loads it into float32 or its own dtype)."""
    check_target(out, "export")  # before the weights are read
    directory = locate_run(run_name, checkpoint_dir)
    opened, model = formats.load_model_dir(directory)
    if dtype != "float32":
        model = formats.cast_model(model, dtype)
    write_model_dir(model, opened.hparams, opened.vocabulary_files, out, "export")
    return opened.checkpoint
