"""One fine-tuning step, gpt2_tf2 next to its peers: tokens/s and peak memory, fresh processes.

Random weights (no download), no dropout anywhere (the original fine-tuning had none), a batch of
`--batch` x `--seq` tokens, Adam(W) with learning rate 2e-5. Each configuration runs in its own
process: build, one step (tracing and compilation), then `--steps` timed steps; the median is
reported. Peak memory is the process's peak resident set size, which includes each framework's
runtime. Prints one JSON line per configuration; bench/benchmarks.py renders them.

    python bench/train_speed.py [--impls ours,hf_torch,...] [--size 124M] [--batch 1 --seq 1024]
"""

from __future__ import annotations

import argparse
import json
import resource

from _child import add_child_flags, run_json, timed  # bench/ is sys.path[0] when run as a script

IMPLS = ("ours", "ours_recompute", "hf_torch", "hf_tf", "hf_tf_xla", "keras_hub_xla")
SHAPES = {"124M": (768, 12, 12), "355M": (1024, 16, 24)}  # n_embd, n_head, n_layer


def tokens(batch: int, seq: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 50257, (batch, seq + 1)).astype("int32")


def ours(size: str, recompute: bool):
    import tensorflow as tf

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.training.config import TrainConfig
    from gpt2_tf2.training.step import Trainer

    trainer = Trainer(
        GPT2(PRESETS[size], seed=0),
        TrainConfig(optimizer="adam", learning_rate=2e-5, memory_saving_gradients=recompute),
    )

    def step(ids):
        return float(trainer.train_step(tf.constant(ids[None]))["loss"])

    return step, tf.__version__


def hf_config(size: str, transformers):
    n_embd, n_head, n_layer = SHAPES[size]
    return transformers.GPT2Config(
        n_embd=n_embd,
        n_head=n_head,
        n_layer=n_layer,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def hf_torch(size: str):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf_config(size, transformers)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)

    def step(ids):
        ids = torch.tensor(ids, dtype=torch.long)
        loss = model(ids[:, :-1], labels=ids[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    return step, torch.__version__


def hf_tf(size: str, xla: bool):
    import tensorflow as tf
    import tf_keras
    import transformers

    model = transformers.TFGPT2LMHeadModel(hf_config(size, transformers))
    opt = tf_keras.optimizers.AdamW(learning_rate=2e-5)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=xla)
    def train_step(ids):
        with tf.GradientTape() as tape:
            logits = model(ids[:, :-1], training=True).logits
            loss = loss_fn(ids[:, 1:], logits)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return lambda ids: float(train_step(tf.constant(ids))), tf.__version__


def keras_hub(size: str):
    import keras
    import keras_hub

    n_embd, n_head, n_layer = SHAPES[size]
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257,
        num_layers=n_layer,
        num_heads=n_head,
        hidden_dim=n_embd,
        intermediate_dim=4 * n_embd,
        dropout=0.0,
        max_sequence_length=1024,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=2e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )

    def step(ids):
        x = {"token_ids": ids[:, :-1], "padding_mask": ids[:, :-1] >= 0}
        out = lm.train_on_batch(x, ids[:, 1:])
        return float(out[0] if isinstance(out, (list, tuple)) else out)

    return step, keras.__version__


def child(impl: str, size: str, batch: int, seq: int, steps: int) -> None:
    build = {
        "ours": lambda: ours(size, False),
        "ours_recompute": lambda: ours(size, True),
        "hf_torch": lambda: hf_torch(size),
        "hf_tf": lambda: hf_tf(size, False),
        "hf_tf_xla": lambda: hf_tf(size, True),
        "keras_hub_xla": lambda: keras_hub(size),
    }[impl]
    step, version = build()
    ids = tokens(batch, seq)
    first, times = timed(step, ids, steps)
    times.sort()
    row = {
        "impl": impl,
        "size": size,
        "batch": batch,
        "seq": seq,
        "tok_s": batch * seq / times[len(times) // 2],
        "first_s": first,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "version": version,
    }
    print(json.dumps(row), flush=True)


def run(impl: str, size: str, batch: int, seq: int, steps: int) -> dict:
    args = ["--child", impl, "--size", size, "--batch", str(batch), "--seq", str(seq)]
    rows, error = run_json(__file__, args + ["--steps", str(steps)])
    if error:
        return {"impl": impl, "size": size, "batch": batch, "seq": seq, "error": error}
    return rows[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    add_child_flags(parser, IMPLS)
    parser.add_argument(
        "--size",
        default="124M",
        choices=sorted(SHAPES),
        help="the release whose shape to train (default 124M)",
    )
    parser.add_argument("--batch", type=int, default=1, help="sequences a batch has (default 1)")
    parser.add_argument(
        "--seq", type=int, default=1024, help="tokens a sequence has (default 1024)"
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps after the first (default 3)"
    )
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.size, args.batch, args.seq, args.steps)
    for impl in args.impls.split(","):
        print(json.dumps(run(impl, args.size, args.batch, args.seq, args.steps)), flush=True)


if __name__ == "__main__":
    main()
