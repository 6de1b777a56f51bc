"""`python -m gpt2_tf2.train --dataset D --run_name R`: fine-tune GPT-2, resumably.

nshepperd's `train.py` flags and defaults, plus a schedule, clipping, a step limit and exact resume:
the checkpoint holds the model, the optimizer's slots and iteration count and the global step, and
the data windows are a function of (seed, step), so a resumed run continues the same trajectory.
A checkpoint is saved every --save_every steps, on SIGINT/SIGTERM, and at the end.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from gpt2_tf2 import cli
from gpt2_tf2.errors import UserError

SAMPLE_HEADER = "======== SAMPLE {} ========"


def scalars(writer, step: int, **values) -> None:
    """TensorBoard scalars without the tensorboard package (TF >= 2.18 no longer depends on it):
    `tf.summary.write` with the metadata of TensorBoard's scalars plugin."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    with writer.as_default(step=step):
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(value, tf.float32), metadata=metadata)


def _check(cond, message):
    if not cond:
        raise UserError(message)


def _is_int(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def write_samples(lm, path: str, length: int, nsamples: int, seed: int, top_k, top_p) -> None:
    """Unconditional samples during training: printed, and written to `path`."""
    from tqdm import tqdm

    length = min(length, lm.hparams.n_ctx)
    rows = next(
        lm.generate_tokens(None, length, nsamples, nsamples, top_k=top_k, top_p=top_p, seed=seed)
    )
    texts = [
        SAMPLE_HEADER.format(i + 1) + "\n" + lm.encoder.decode(r) + "\n" for i, r in enumerate(rows)
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(texts))
    for t in texts:
        tqdm.write(t)


def check_flags(f: dict) -> None:
    """One clear line for the first impossible flag value, before any work is done.

    f: train()'s arguments by name.
    """
    _check(f["dataset"] is not None, "--dataset is required (a text file, directory, glob or .npz)")
    minimum = {
        "batch_size": 1,
        "accumulate_gradients": 1,
        "sample_every": 0,
        "sample_num": 1,
        "save_every": 0,
        "val_batch_size": 1,
        "val_batch_count": 1,
        "val_every": 0,
        "warmup_steps": 0,
        "sample_length": 1,
        "combine": 1,
    }
    for name, low in minimum.items():
        value = f[name]
        _check(_is_int(value, low), f"--{name} must be an integer >= {low}, got {value!r}")
    _check(
        f["steps"] is None or _is_int(f["steps"], 1),
        f"--steps must be a positive integer, got {f['steps']!r}",
    )
    _check(
        isinstance(f["learning_rate"], (int, float)) and f["learning_rate"] > 0,
        f"--learning_rate must be > 0, got {f['learning_rate']!r}",
    )
    _check(
        f["optimizer"] in ("adam", "adamw", "sgd", "adafactor"),
        f"--optimizer must be adam, adamw, sgd or adafactor, got {f['optimizer']!r}",
    )
    _check(f["lr_schedule"] in ("constant", "cosine"), "--lr_schedule must be constant or cosine")
    _check(f["lr_schedule"] != "cosine" or f["steps"], "--lr_schedule cosine needs --steps")
    _check(
        isinstance(f["noise"], (int, float)) and 0 <= f["noise"] < 1, "--noise must be in [0, 1)"
    )
    _check(
        isinstance(f["grad_clip"], (int, float)) and f["grad_clip"] >= 0, "--grad_clip must be >= 0"
    )
    _check(_is_int(f["top_k"], 0), f"--top_k must be an integer >= 0, got {f['top_k']!r}")
    _check(
        f["mixed_precision"] in ("none", "bf16", "fp16"),
        f"--mixed_precision must be none, bf16 or fp16, got {f['mixed_precision']!r}",
    )
    _check(
        isinstance(f["top_p"], (int, float)) and 0 <= f["top_p"] <= 1, "--top_p must be in [0, 1]"
    )


def train(
    dataset=None,
    model_name="124M",
    models_dir="models",
    combine=50000,
    encoding="utf-8",
    batch_size=1,
    learning_rate=0.00002,
    accumulate_gradients=1,
    memory_saving_gradients=False,
    only_train_transformer_layers=False,
    optimizer="adam",
    noise=0.0,
    top_k=40,
    top_p=0.0,
    restore_from="latest",
    run_name="run1",
    sample_every=100,
    sample_length=1023,
    sample_num=1,
    save_every=1000,
    val_dataset=None,
    val_batch_size=2,
    val_batch_count=40,
    val_every=0,
    steps=None,
    warmup_steps=0,
    lr_schedule="constant",
    grad_clip=0.0,
    weight_decay=0.01,
    sequence_length=None,
    mixed_precision="none",
    seed=None,
    checkpoint_dir="checkpoint",
    sample_dir="samples",
    offline=False,
    verbose=False,
):
    """Fine-tune GPT-2 on a dataset; resumes the run's newest checkpoint by default.

    Args:
      dataset: text file, directory, glob, or .npz from `gpt2_tf2.encode` (required).
      model_name: base model: release name under models_dir or a model directory.
      models_dir: directory holding the release directories.
      combine: when encoding text, join files into chunks of at least this many characters.
      encoding: the text files' encoding.
      batch_size: windows per micro-batch.
      learning_rate: peak learning rate.
      accumulate_gradients: micro-batches averaged into each update (effective batch =
        batch_size * accumulate_gradients).
      memory_saving_gradients: recompute each block in the backward pass: a third less memory,
        up to a third slower (docs/training-memory.md).
      only_train_transformer_layers: train the blocks only (not wte, wpe, ln_f).
      optimizer: adam (as nshepperd's), adamw, sgd or adafactor (least memory).
      noise: probability of replacing each input token by a random one (regularisation).
      top_k: top-k for the samples printed during training (0 = off).
      top_p: top-p for those samples (0 or 1 = off).
      restore_from: 'latest' (this run's newest checkpoint, else the base model), 'fresh' (the base
        model), or a path: a training checkpoint, a run directory or a model directory.
      run_name: the run; checkpoints go to checkpoint_dir/run_name.
      sample_every: print and save samples every N steps; 0 = never.
      sample_length: tokens per sample (at most the model's context).
      sample_num: samples each time.
      save_every: save a checkpoint every N steps; 0 = only on interrupt and at the end.
      val_dataset: dataset for validation loss; default: the last 5% of --dataset held out.
      val_batch_size: windows per validation batch.
      val_batch_count: validation batches (a fixed set, the same every time).
      val_every: compute validation loss every N steps; 0 = never.
      steps: stop when the global step reaches N (a resumed run counts steps already done);
        default: until interrupted.
      warmup_steps: linear learning-rate warm-up over the first N steps.
      lr_schedule: constant, or cosine (decays to 0 at --steps).
      grad_clip: clip gradients to this global norm; 0 = off.
      weight_decay: decoupled weight decay for adamw.
      sequence_length: tokens per training window; default the model's context (1024).
      mixed_precision: none (float32), bf16 or fp16 (with dynamic loss scaling): compute in 16
        bits with float32 weights; layer norms, softmax and the loss stay float32.
      seed: seed of the data order and noise; default random for a new run, the run's own seed
        when resuming.
      checkpoint_dir: where run directories live.
      sample_dir: samples go to sample_dir/run_name/samples-STEP.
      offline: never download the base model.
      verbose: show TensorFlow's log messages.
    """
    cli.configure_logging(verbose, xla=True)
    check_flags(locals())

    import tensorflow as tf
    from tqdm import tqdm

    from gpt2_tf2 import api, checkpoint, runs
    from gpt2_tf2 import dataset as data
    from gpt2_tf2.encoder import load_encoder
    from gpt2_tf2.hparams import load_hparams
    from gpt2_tf2.model import GPT2
    from gpt2_tf2.training import COMPUTE_DTYPES, TrainConfig, Trainer

    cli.setup_devices(verbose)
    directory = runs.run_dir(run_name, checkpoint_dir)
    info = runs.read_info(directory) if restore_from == "latest" else {}
    if seed is None:
        seed = info.get("seed", int.from_bytes(os.urandom(4), "little") >> 1)
    _check(_is_int(seed, 0), f"--seed must be an integer >= 0, got {seed!r}")

    model_dir = api.find_model_dir(str(model_name), str(models_dir), download=not offline)
    hparams = load_hparams(model_dir)
    encoder = load_encoder(model_dir)
    seq_len = hparams.n_ctx if sequence_length is None else sequence_length
    _check(
        _is_int(seq_len, 1) and seq_len <= hparams.n_ctx,
        f"--sequence_length must be in 1..{hparams.n_ctx}, got {sequence_length!r}",
    )
    runs.check_hparams(directory, hparams)  # before the data is read

    chunks = data.load_dataset(encoder, str(dataset), combine, str(encoding), progress=True)
    val_chunks = None
    if val_dataset is not None:
        val_chunks = data.load_dataset(encoder, str(val_dataset), combine, str(encoding))
    elif val_every:
        chunks, val_chunks = data.split_validation(chunks, seq_len + 1)
    sampler = data.Sampler(chunks, seq_len + 1, seed)
    val_batches = None
    if val_chunks is not None and val_every:
        val_sampler = data.Sampler(val_chunks, seq_len + 1, seed=1)
        val_batches = [val_sampler.batch(i, val_batch_size) for i in range(val_batch_count)]

    cfg = TrainConfig(
        learning_rate=float(learning_rate),
        optimizer=optimizer,
        accumulate_gradients=accumulate_gradients,
        memory_saving_gradients=bool(memory_saving_gradients),
        only_train_transformer_layers=bool(only_train_transformer_layers),
        noise=float(noise),
        warmup_steps=warmup_steps,
        lr_schedule=lr_schedule,
        total_steps=steps or 0,
        grad_clip=float(grad_clip),
        weight_decay=float(weight_decay),
        mixed_precision=mixed_precision,
        seed=seed,
    )
    model = GPT2(hparams, seed=None, compute_dtype=COMPUTE_DTYPES[mixed_precision])
    trainer = Trainer(model, cfg)
    ckpt, manager = runs.make_manager(trainer, directory)

    source, model_dir = runs.starting_point(restore_from, manager.latest_checkpoint, model_dir)
    if source:
        runs.restore(ckpt, source, strict=True)
        print(f"resuming from {source} at step {int(trainer.step)}", file=sys.stderr)
    else:
        checkpoint.load_openai_checkpoint(model, checkpoint.find_checkpoint(model_dir))
        print(f"starting from {model_dir}", file=sys.stderr)
    runs.prepare(
        directory,
        hparams,
        model_dir,
        {
            "seed": seed,
            "optimizer": optimizer,
            "base_model": model_dir,
            "only_train_transformer_layers": bool(only_train_transformer_layers),
        },
    )

    lm = api.LanguageModel(hparams, encoder, model)
    writer = tf.summary.create_file_writer(os.path.join(directory, "logs"))
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def save():
        step = int(trainer.step)
        if manager.latest_checkpoint != os.path.join(directory, f"ckpt-{step}"):
            manager.save(checkpoint_number=step)
            tqdm.write(f"saved {directory}/ckpt-{step}")

    tokens_per_step = batch_size * accumulate_gradients * seq_len
    start = int(trainer.step)
    bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)
    log = open(os.path.join(directory, "log.tsv"), "a", encoding="utf-8")
    try:
        while steps is None or int(trainer.step) < steps:
            step = int(trainer.step)
            windows = sampler.batch(step, batch_size * accumulate_gradients)
            windows = windows.reshape(accumulate_gradients, batch_size, seq_len + 1)
            began = time.perf_counter()
            out = trainer.train_step(tf.constant(windows))
            loss, lr = float(out["loss"]), float(out["lr"])
            speed = tokens_per_step / (time.perf_counter() - began)
            step += 1
            log.write(f"{step}\t{loss:.9g}\t{lr:.6g}\t{speed:.1f}\n")
            log.flush()
            scalars(writer, step, loss=loss, learning_rate=lr, tokens_per_second=speed)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", tok_s=f"{speed:.0f}")
            bar.update(1)
            if save_every and step % save_every == 0:
                save()
            if val_batches and step % val_every == 0:
                val = float(
                    np.mean([float(trainer.eval_loss(tf.constant(b))) for b in val_batches])
                )
                scalars(writer, step, val_loss=val)
                tqdm.write(f"step {step}: validation loss {val:.4f}")
            if sample_every and step % sample_every == 0:
                settings = {"top_k": top_k, "top_p": top_p if 0 < top_p < 1 else 1.0}
                path = os.path.join(sample_dir, run_name, f"samples-{step}")
                write_samples(lm, path, sample_length, sample_num, seed + step, **settings)
            if stop["signal"] is not None:
                break
        save()
    finally:
        bar.close()
        log.close()
        writer.flush()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop["signal"] is not None:
        name = signal.Signals(stop["signal"]).name
        print(f"{name}: stopped at step {int(trainer.step)}, checkpoint saved", file=sys.stderr)
        sys.exit(128 + stop["signal"])
    return None


train.uses_xla = True  # cli.run hides XLA's first-compilation log lines too


def main(argv=None):
    cli.run(train, argv, name="gpt2_tf2.train")


if __name__ == "__main__":
    main()
