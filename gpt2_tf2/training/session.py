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
from gpt2_tf2.training import callbacks, data, distribute, runs
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
    strategy: object = None  # a tf.distribute strategy, or None (one device)
    worker_dir: str | None = None  # a non-chief worker's temporary directory, removed at the end

    @property
    def chief(self) -> bool:
        return self.worker_dir is None


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
        f"`restore_from` {cfg.restore_from} would start it over and replace them: use a new "
        f"`run_name`, or add `overwrite` to discard them"
    )


def load_data(cfg: TrainConfig, base: formats.ModelDir, seq_len: int, progress: bool = True):
    """(training batches, validation batches or None) as the config asks."""
    encoder, n_vocab = base.encoder, base.hparams.n_vocab
    chunks = data.load_dataset(
        encoder,
        str(cfg.dataset),
        cfg.combine,
        str(cfg.encoding),
        progress=progress,
        n_vocab=n_vocab,
    )
    val_chunks = None
    if cfg.val_dataset is not None:
        val_chunks = data.load_dataset(
            encoder, str(cfg.val_dataset), cfg.combine, str(cfg.encoding), n_vocab=n_vocab
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


def start(cfg: TrainConfig, strategy=None) -> Run:
    """Everything a run needs, restored to where it starts; says where on stderr. The run's
    directory stays locked for this process until the loop ends (`Run.lock`). A non-chief
    worker of a multi-worker run reads the run's directory and writes to a temporary one.
    `strategy`: made from `cfg.strategy` unless given (the command line makes it first thing,
    as TensorFlow requires of multi-worker strategies)."""
    if strategy is None:
        strategy = distribute.make_strategy(cfg.strategy, cfg.num_cpu_devices)
    directory = runs.run_dir(cfg.run_name, cfg.checkpoint_dir)
    worker_dir = None if distribute.is_chief(strategy) else distribute.worker_directory()
    lock = runs.RunLock(worker_dir or directory).acquire()
    try:
        why = "its own output says why (e.g. a bad flag or a missing file)"
        with distribute.lost_workers(strategy, why):
            return _start(cfg, directory, lock, strategy, worker_dir)
    except BaseException:
        lock.release()
        if worker_dir:
            distribute.remove_worker_directory(worker_dir)
        raise


def _start(cfg: TrainConfig, directory: str, lock, strategy, worker_dir) -> Run:
    chief = worker_dir is None
    newest = runs.latest(directory)
    check_start(cfg, directory, newest)
    resuming = cfg.restore_from == "latest" and newest is not None
    cfg = resolve_seed(cfg, directory, resuming) if chief else cfg
    seed = distribute.chief_values(strategy, [cfg.seed if chief else 0])[0]
    cfg = dataclasses.replace(cfg, seed=seed)
    base_dir = formats.find_model_dir(str(cfg.model_name), str(cfg.models_dir), not cfg.offline)
    base = formats.open_model_dir(base_dir)
    seq_len = cfg.check_sequence_length(base.hparams.n_ctx)
    runs.check_hparams(directory, base.hparams)  # before the data is read
    if strategy is not None:
        distribute.check_batch(cfg.batch_size, strategy.num_replicas_in_sync)
    batches, val_batches = load_data(cfg, base, seq_len, progress=chief)

    model, trainer = make_trainer(base.hparams, cfg, strategy)
    if chief:  # the start is accepted: the last moment before the run writes
        runs.remove_stale_temporaries(directory)
        if cfg.overwrite and cfg.restore_from != "latest":
            runs.discard(directory)  # asked for
    ckpt, manager = runs.make_manager(trainer, worker_dir or directory)
    source, weights_dir = runs.starting_point(cfg.restore_from, newest, base_dir)
    weights = base if weights_dir == base_dir else formats.open_model_dir(weights_dir)
    if source:
        runs.restore(ckpt, source, strict=True)
        check_steps_left(cfg, directory, int(trainer.step.numpy()))
    else:
        formats.load_weights(weights, model)
    if strategy is not None:
        distribute.check_same_step(strategy, int(trainer.step.numpy()))
    if chief:
        where = f"resuming from {source} at step {int(trainer.step.numpy())}" if source else None
        print(where or f"starting from {weights_dir}", file=sys.stderr)
        if strategy is not None:
            print(distribute.describe(strategy), file=sys.stderr)
    info = {
        "seed": cfg.seed,
        "optimizer": cfg.optimizer,
        "base_model": weights_dir,
        "only_train_transformer_layers": bool(cfg.only_train_transformer_layers),
    }
    runs.prepare(worker_dir or directory, weights, info)
    lm = LanguageModel(base.hparams, base.encoder, model)
    return Run(
        cfg,
        directory,
        trainer,
        manager,
        batches,
        val_batches,
        lm,
        seq_len,
        lock,
        strategy,
        worker_dir,
    )


def make_trainer(hparams, cfg: TrainConfig, strategy):
    """(model, trainer): on one device, or every variable mirrored on the strategy's replicas."""
    dtype = COMPUTE_DTYPES[cfg.mixed_precision]
    if strategy is None:
        model = GPT2(hparams, seed=None, compute_dtype=dtype)
        return model, Trainer(model, cfg)
    with strategy.scope():
        model = GPT2(hparams, seed=None, compute_dtype=dtype)
        return model, distribute.ReplicatedTrainer(model, cfg, strategy)


def check_steps_left(cfg: TrainConfig, directory: str, step: int) -> None:
    if cfg.steps is not None and step >= cfg.steps:
        raise UserError(
            f"{directory} is already at step {step}, and `steps` {cfg.steps} asks for no more; "
            f"raise `steps` to train on"
        )


def loop(run: Run, extra=()) -> Loop:
    """The loop over `run` with today's callbacks (log, progress, checkpoints, validation,
    samples), then `extra` ones. A non-chief worker only saves (to its temporary directory)."""
    cfg = run.cfg
    if not run.chief:
        saves = callbacks.Checkpoint(run.manager, run.worker_dir, cfg.save_every, run.trainer)
        saves.announce = False
        chain = [saves, *extra, Unlock(run.lock), RemoveDirectory(run.worker_dir)]
        return Loop(run.trainer, run.batches, chain, cfg.steps)
    tokens_per_step = cfg.batch_size * cfg.accumulate_gradients * run.seq_len
    log = callbacks.Log(run.directory, tokens_per_step, int(run.trainer.step.numpy()))
    sample_dir = os.path.join(cfg.sample_dir, cfg.run_name)
    chain = [
        log,
        callbacks.Progress(cfg.steps, int(run.trainer.step.numpy())),
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


def run_loop(loop: Loop, run: Run) -> int:
    """`loop.run()`; a multi-worker run that loses a worker ends with one line that says how to
    resume (TensorFlow's collectives notice a dead peer by its missing heartbeats)."""
    resume = (
        f"the newest checkpoint in {run.directory} is intact: start every worker again with "
        f"the same command to resume"
    )
    with distribute.lost_workers(run.strategy, resume):
        return loop.run()


class RemoveDirectory(Callback):
    """A non-chief worker's temporary checkpoints go when its loop is over."""

    def __init__(self, directory: str):
        self.directory = directory

    def close(self, loop):
        distribute.remove_worker_directory(self.directory)


class Unlock(Callback):
    """Releases the run's lock when the loop is over (also after an error)."""

    def __init__(self, lock: runs.RunLock):
        self.lock = lock

    def close(self, loop):
        self.lock.release()
