"""The training loop's callbacks: checkpoints, the TSV and TensorBoard log, the progress bar,
validation and samples. Each is small and optional; `session.callbacks` picks today's set.
Signal handling is process-wide and lives with the command line (`cli/train.py`)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from gpt2_tf2.errors import UserError, reason
from gpt2_tf2.files import human_size, write_atomically
from gpt2_tf2.training import runs
from gpt2_tf2.training.loop import Callback

SAMPLE_HEADER = "======== SAMPLE {} ========"


class Checkpoint(Callback):
    """Save every `every` steps (0: never) and at the end; a step is saved at most once."""

    announce = True  # print "saved ..." (not on a multi-worker run's other workers)

    def __init__(self, manager: tf.train.CheckpointManager, directory: str, every: int, trainer):
        self.manager, self.directory, self.every, self.trainer = manager, directory, every, trainer

    def save(self, step: int) -> None:
        if self.manager.latest_checkpoint == os.path.join(self.directory, f"ckpt-{step}"):
            return
        # The manager keeps the newest five: a save of non-finite weights could rotate the last
        # good checkpoint away, so none is ever made.
        bad = next((v.name for v in self.trainer.model.variables if not _finite(v)), None)
        if bad is not None:
            raise UserError(
                f"{self.directory}: not saving ckpt-{step}: weight {bad} is NaN or infinite; "
                f"the checkpoints there are as they were; lower `learning_rate`, or check the data"
            )
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as e:
            # TensorFlow writes ckpt-N_temp/ first and names it in the index last: the previous
            # checkpoint is intact; the partial one is removed so it does not keep the disk full.
            runs.remove_stale_temporaries(self.directory)
            raise UserError(
                f"{self.directory}: cannot save ckpt-{step} ({reason(e)}); about "
                f"{human_size(_size_bytes(self.trainer))} needed; the previous checkpoint is "
                f"intact: free space and run the same command to resume from it"
            ) from None
        if self.announce:
            tqdm.write(f"saved {self.directory}/ckpt-{step}")

    def on_step(self, loop, step, metrics):
        if self.every and step % self.every == 0:
            self.save(step)

    def on_end(self, loop):
        self.save(loop.step)


def _finite(variable) -> bool:
    return bool(tf.reduce_all(tf.math.is_finite(variable)))


def _size_bytes(trainer) -> int:
    """About what one checkpoint takes: every variable of the trainer (model, optimizer)."""
    return sum(v.shape.num_elements() * v.dtype.size for v in trainer.variables)


def scalars(writer, step: int, **values) -> None:
    """TensorBoard scalars without the tensorboard package (TF >= 2.18 no longer depends on it):
    `tf.summary.write` with the metadata of TensorBoard's scalars plugin."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    with writer.as_default(step=step):
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(value, tf.float32), metadata=metadata)


class Log(Callback):
    """Per step: `log.tsv` (step, loss, learning rate, tokens/s) and TensorBoard scalars in
    `directory/logs`; `scalars()` lets other callbacks add theirs."""

    def __init__(self, directory: str, tokens_per_step: int, start: int = 0):
        self.tokens_per_step = tokens_per_step
        self.writer = tf.summary.create_file_writer(os.path.join(directory, "logs"))
        path = os.path.join(directory, "log.tsv")
        drop_steps_after(path, start)  # a resumed run redoes the steps after its checkpoint
        self.tsv = open(path, "a", encoding="utf-8")

    def scalars(self, step: int, **values) -> None:
        scalars(self.writer, step, **values)

    def on_step(self, loop, step, metrics):
        loss, lr = metrics["loss"], metrics["lr"]
        metrics["tokens_per_second"] = speed = self.tokens_per_step / metrics["seconds"]
        self.tsv.write(f"{step}\t{loss:.9g}\t{lr:.6g}\t{speed:.1f}\n")
        self.tsv.flush()
        self.scalars(step, loss=loss, learning_rate=lr, tokens_per_second=speed)

    def close(self, loop):
        self.tsv.close()
        self.writer.flush()


def drop_steps_after(path: str, step: int) -> None:
    """Keep the lines of log.tsv up to `step`, rewriting it whole."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return
    kept = [
        line
        for line in lines
        if line.split("\t", 1)[0].isdigit() and int(line.split("\t", 1)[0]) <= step
    ]
    if len(kept) == len(lines):
        return
    write_atomically(path, "".join(kept))


class Progress(Callback):
    """A tqdm bar: steps, loss, learning rate, tokens/s (after `Log`, which measures them)."""

    def __init__(self, steps: int | None, start: int):
        self.bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)

    def on_step(self, loop, step, metrics):
        speed = metrics.get("tokens_per_second", 0.0)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.3g}", tok_s=f"{speed:.0f}"
        )
        self.bar.update(1)

    def close(self, loop):
        self.bar.close()


class Validate(Callback):
    """Mean loss over a fixed set of validation batches every `every` steps."""

    def __init__(self, trainer, batches: list, every: int, log: Log | None = None):
        self.trainer, self.batches, self.every, self.log = trainer, batches, every, log

    def on_step(self, loop, step, metrics):
        if not (self.batches and self.every and step % self.every == 0):
            return
        val = float(np.mean([float(self.trainer.eval_loss(tf.constant(b))) for b in self.batches]))
        metrics["val_loss"] = val
        if self.log is not None:
            self.log.scalars(step, val_loss=val)
        tqdm.write(f"step {step}: validation loss {val:.4f}")


class Sample(Callback):
    """Unconditional samples every `every` steps: printed, and written to
    `sample_dir/samples-STEP`; seeded by the run's seed and the step."""

    def __init__(
        self, lm, every: int, sample_dir: str, length: int, num: int, seed: int, top_k, top_p
    ):
        self.lm, self.every, self.sample_dir = lm, every, sample_dir
        self.length, self.num, self.seed = min(length, lm.hparams.n_ctx), num, seed
        self.top_k, self.top_p = top_k, (top_p if 0 < top_p < 1 else 1.0)  # 0 and 1: off

    def on_step(self, loop, step, metrics):
        if self.every and step % self.every == 0:
            self.write(os.path.join(self.sample_dir, f"samples-{step}"), self.seed + step)

    def write(self, path: str, seed: int) -> None:
        rows = next(
            self.lm.generate_tokens(
                None,
                length=self.length,
                nsamples=self.num,
                batch_size=self.num,
                top_k=self.top_k,
                top_p=self.top_p,
                seed=seed,
            )
        )
        decode = self.lm.encoder.decode
        texts = [SAMPLE_HEADER.format(i + 1) + "\n" + decode(r) + "\n" for i, r in enumerate(rows)]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(texts))
        for t in texts:
            tqdm.write(t)
