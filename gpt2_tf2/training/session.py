"""A training run put together from a `TrainConfig`: the base model, the data, the trainer and
its checkpoints, and today's callbacks around the loop (nanoGPT's `train.py`, as functions).

`start(cfg)` does the work that can fail on bad input (finding the model, reading the data,
restoring the run) and says where it starts; `loop(run, cfg, extra)` returns the `Loop` to run.
One switch covers the three starts (nanoGPT's `init_from`): a run's own newest checkpoint
(`restore_from latest`), another training checkpoint (a path), or a base model's weights.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys

from gpt2_tf2.core.model import GPT2
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats import model_dir as formats
from gpt2_tf2.generation.language_model import LanguageModel
from gpt2_tf2.training import callbacks, data, runs
from gpt2_tf2.training.config import TrainConfig
from gpt2_tf2.training.loop import Callback, Loop
from gpt2_tf2.training.step import COMPUTE_DTYPES, Trainer


@dataclasses.dataclass
class Run:
    cfg: TrainConfig  # with the seed resolved
    directory: str  # checkpoint_dir/run_name
    trainer: Trainer
    manager: object  # tf.train.CheckpointManager
    batches: data.Batches
    val_batches: list | None
    lm: LanguageModel  # the trained model, for samples
    seq_len: int
    lock: runs.RunLock  # held until the loop ends


def resolve_seed(cfg: TrainConfig, directory: str, resuming: bool) -> TrainConfig:
    """A new run draws a random seed; a resumed run keeps its own (from run.json)."""
    if cfg.seed is not None:
        return cfg
    seed = runs.read_info(directory)["seed"] if resuming else secrets.randbits(31)
    return dataclasses.replace(cfg, seed=seed)


def check_start(cfg: TrainConfig, directory: str, newest: str | None) -> None:
    """Starting a run over (fresh, or from another checkpoint) must not destroy the one there."""
    if cfg.restore_from == "latest" or newest is None or cfg.overwrite:
        return
    raise UserError(
        f"{directory} already holds this run's checkpoints (newest: {os.path.basename(newest)}); "
        f"--restore_from {cfg.restore_from} would start it over and replace them: use a new "
        f"--run_name, or add --overwrite to discard them"
    )


def load_data(cfg: TrainConfig, base: formats.ModelDir, seq_len: int):
    """(training batches, validation batches or None) as the config asks."""
    encoder = base.encoder
    chunks = data.load_dataset(
        encoder, str(cfg.dataset), cfg.combine, str(cfg.encoding), progress=True
    )
    val_chunks = None
    if cfg.val_dataset is not None:
        val_chunks = data.load_dataset(
            encoder, str(cfg.val_dataset), cfg.combine, str(cfg.encoding)
        )
    elif cfg.val_every:
        chunks, val_chunks = data.split_validation(chunks, seq_len + 1)
    sampler = data.Sampler(chunks, seq_len + 1, cfg.seed)
    batches = data.Batches(sampler, cfg.batch_size, cfg.accumulate_gradients)
    val_batches = None
    if val_chunks is not None and cfg.val_every:
        val_sampler = data.Sampler(val_chunks, seq_len + 1, seed=1)
        val_batches = [val_sampler.batch(i, cfg.val_batch_size) for i in range(cfg.val_batch_count)]
    return batches, val_batches


def start(cfg: TrainConfig) -> Run:
    """Everything a run needs, restored to where it starts; says where on stderr. The run's
    directory stays locked for this process until the loop ends (`Run.lock`)."""
    directory = runs.run_dir(cfg.run_name, cfg.checkpoint_dir)
    lock = runs.RunLock(directory).acquire()
    try:
        return _start(cfg, directory, lock)
    except BaseException:
        lock.release()
        raise


def _start(cfg: TrainConfig, directory: str, lock: runs.RunLock) -> Run:
    runs.remove_stale_temporaries(directory)
    newest = runs.latest(directory)
    check_start(cfg, directory, newest)
    cfg = resolve_seed(cfg, directory, resuming=cfg.restore_from == "latest" and newest is not None)
    base_dir = formats.find_model_dir(str(cfg.model_name), str(cfg.models_dir), not cfg.offline)
    base = formats.open_model_dir(base_dir)
    seq_len = cfg.check_sequence_length(base.hparams.n_ctx)
    runs.check_hparams(directory, base.hparams)  # before the data is read
    batches, val_batches = load_data(cfg, base, seq_len)

    model = GPT2(base.hparams, seed=None, compute_dtype=COMPUTE_DTYPES[cfg.mixed_precision])
    trainer = Trainer(model, cfg)
    if cfg.overwrite and cfg.restore_from != "latest":
        runs.discard(directory)  # asked for; the last moment before the run writes
    ckpt, manager = runs.make_manager(trainer, directory)
    source, weights_dir = runs.starting_point(cfg.restore_from, manager.latest_checkpoint, base_dir)
    weights = base if weights_dir == base_dir else formats.open_model_dir(weights_dir)
    if source:
        runs.restore(ckpt, source, strict=True)
        check_steps_left(cfg, directory, int(trainer.step))
        print(f"resuming from {source} at step {int(trainer.step)}", file=sys.stderr)
    else:
        formats.load_weights(weights, model)
        print(f"starting from {weights_dir}", file=sys.stderr)
    info = {
        "seed": cfg.seed,
        "optimizer": cfg.optimizer,
        "base_model": weights_dir,
        "only_train_transformer_layers": bool(cfg.only_train_transformer_layers),
    }
    runs.prepare(directory, weights, info)
    lm = LanguageModel(base.hparams, base.encoder, model)
    return Run(cfg, directory, trainer, manager, batches, val_batches, lm, seq_len, lock)


def check_steps_left(cfg: TrainConfig, directory: str, step: int) -> None:
    if cfg.steps is not None and step >= cfg.steps:
        raise UserError(
            f"{directory} is already at step {step}, and --steps {cfg.steps} asks for no more; "
            f"raise --steps to train on"
        )


def loop(run: Run, extra=()) -> Loop:
    """The loop over `run` with today's callbacks (log, progress, checkpoints, validation,
    samples), then `extra` ones."""
    cfg = run.cfg
    tokens_per_step = cfg.batch_size * cfg.accumulate_gradients * run.seq_len
    log = callbacks.Log(run.directory, tokens_per_step, int(run.trainer.step))
    sample_dir = os.path.join(cfg.sample_dir, cfg.run_name)
    chain = [
        log,
        callbacks.Progress(cfg.steps, int(run.trainer.step)),
        callbacks.Checkpoint(run.manager, run.directory, cfg.save_every, run.trainer),
        callbacks.Validate(run.trainer, run.val_batches, cfg.val_every, log),
        callbacks.Sample(
            run.lm,
            cfg.sample_every,
            sample_dir,
            cfg.sample_length,
            cfg.sample_num,
            cfg.seed,
            cfg.top_k,
            cfg.top_p,
        ),
        *extra,
        Unlock(run.lock),
    ]
    return Loop(run.trainer, run.batches, chain, cfg.steps)


class Unlock(Callback):
    """Releases the run's lock when the loop is over (also after an error)."""

    def __init__(self, lock: runs.RunLock):
        self.lock = lock

    def close(self, loop):
        self.lock.release()
