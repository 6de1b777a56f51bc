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
import sys

from gpt2_tf2.core.model import GPT2
from gpt2_tf2.formats import model_dir as formats
from gpt2_tf2.generation.language_model import LanguageModel
from gpt2_tf2.training import callbacks, data, runs
from gpt2_tf2.training.config import TrainConfig
from gpt2_tf2.training.loop import Loop
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


def resolve_seed(cfg: TrainConfig, directory: str) -> TrainConfig:
    """A new run draws a random seed; a resumed run keeps its own (from run.json)."""
    if cfg.seed is not None:
        return cfg
    info = runs.read_info(directory) if cfg.restore_from == "latest" else {}
    seed = info.get("seed", int.from_bytes(os.urandom(4), "little") >> 1)
    return dataclasses.replace(cfg, seed=seed)


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
    """Everything a run needs, restored to where it starts; says where on stderr."""
    directory = runs.run_dir(cfg.run_name, cfg.checkpoint_dir)
    cfg = resolve_seed(cfg, directory)
    base_dir = formats.find_model_dir(str(cfg.model_name), str(cfg.models_dir), not cfg.offline)
    base = formats.open_model_dir(base_dir)
    seq_len = cfg.check_sequence_length(base.hparams.n_ctx)
    runs.check_hparams(directory, base.hparams)  # before the data is read
    batches, val_batches = load_data(cfg, base, seq_len)

    model = GPT2(base.hparams, seed=None, compute_dtype=COMPUTE_DTYPES[cfg.mixed_precision])
    trainer = Trainer(model, cfg)
    ckpt, manager = runs.make_manager(trainer, directory)
    source, weights_dir = runs.starting_point(cfg.restore_from, manager.latest_checkpoint, base_dir)
    weights = base if weights_dir == base_dir else formats.open_model_dir(weights_dir)
    if source:
        runs.restore(ckpt, source, strict=True)
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
    return Run(cfg, directory, trainer, manager, batches, val_batches, lm, seq_len)


def loop(run: Run, extra=()) -> Loop:
    """The loop over `run` with today's callbacks (log, progress, checkpoints, validation,
    samples), then `extra` ones."""
    cfg = run.cfg
    log = callbacks.Log(run.directory, cfg.batch_size * cfg.accumulate_gradients * run.seq_len)
    sample_dir = os.path.join(cfg.sample_dir, cfg.run_name)
    chain = [
        log,
        callbacks.Progress(cfg.steps, int(run.trainer.step)),
        callbacks.Checkpoint(run.manager, run.directory, cfg.save_every),
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
    ]
    return Loop(run.trainer, run.batches, chain, cfg.steps)
