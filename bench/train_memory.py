"""Peak memory and speed of one training step (1 x 1024 tokens) at the 124M and 355M shapes.

Each configuration runs in a fresh process on random weights (no download): build the model and
optimizer, run one step (tracing included), then time a second one. Peak memory is the process's
peak resident set size (getrusage), so it includes TensorFlow's own ~0.5 GB; on a GPU the device
memory needed is close to it minus that runtime. Writes docs/benchmarks/training-memory.md.

    python bench/train_memory.py [--sizes 124M,355M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

from _child import run_json  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZERS = ("adam", "adafactor", "sgd")


def child(cfg: dict) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.training.config import TrainConfig
    from gpt2_tf2.training.step import COMPUTE_DTYPES, Trainer

    hp = PRESETS[cfg["size"]]
    model = GPT2(hp, seed=0, compute_dtype=COMPUTE_DTYPES[cfg["precision"]])
    trainer = Trainer(
        model,
        TrainConfig(
            optimizer=cfg["optimizer"],
            memory_saving_gradients=cfg["recompute"],
            mixed_precision=cfg["precision"],
        ),
    )
    rng = np.random.default_rng(0)
    windows = tf.constant(rng.integers(0, hp.n_vocab, (1, 1, cfg["seq"] + 1)), tf.int32)
    began = time.perf_counter()
    float(trainer.train_step(windows)["loss"])
    first = time.perf_counter() - began
    began = time.perf_counter()
    float(trainer.train_step(windows)["loss"])
    step = time.perf_counter() - began
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**cfg, "peak_gb": peak_kb / 2**20, "tok_s": cfg["seq"] / step, "first_s": first}


def run(cfg: dict) -> dict:
    rows, error = run_json(__file__, ["--child", json.dumps(cfg)])
    return {**cfg, "error": error} if error else rows[-1]


def fits(peak_gb: float) -> str:
    for budget in (6, 8, 12, 24):
        if peak_gb <= budget * 0.95:  # 5% spare for fragmentation and the CUDA context
            return f"{budget} GB"
    return "> 24 GB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help="internal: the child's configuration as JSON")
    parser.add_argument(
        "--sizes",
        default="124M,355M",
        help="releases whose shapes to train, comma-separated (default 124M,355M)",
    )
    parser.add_argument(
        "--precisions",
        default="none,bf16",
        help="mixed precisions, comma-separated: none, bf16, fp16 (default none,bf16)",
    )
    parser.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        help="optimizers, comma-separated (default adam,adafactor,sgd)",
    )
    parser.add_argument(
        "--seq", type=int, default=1024, help="tokens a sequence has (default 1024)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "docs", "benchmarks", "training-memory.md"),
        help="the page to write (default docs/benchmarks/training-memory.md)",
    )
    parser.add_argument("--rows", help="render the table from JSON lines printed by a run")
    parser.add_argument("--note", default="", help="a sentence on the conditions of the run")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.rows:
        with open(args.rows, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.startswith("{")]
        return write_table(rows, args)
    rows = []
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            # Every optimizer in float32; 16-bit compute with Adam only (on a CPU it shows the
            # memory effect; its speed here says nothing about GPUs).
            optimizers = args.optimizers.split(",")
            for optimizer in optimizers if precision == "none" else ("adam",):
                for recompute in (False, True):
                    cfg = {
                        "size": size,
                        "optimizer": optimizer,
                        "recompute": recompute,
                        "precision": precision,
                        "seq": args.seq,
                    }
                    rows.append(run(cfg))
                    print(json.dumps(rows[-1]), flush=True)
    write_table(rows, args)


def write_table(rows: list[dict], args) -> None:
    import tensorflow as tf

    lines = [
        "# Training memory and speed",
        "",
        f"One training step of batch 1 x {args.seq} tokens, random weights, measured by "
        "`python bench/train_memory.py` on "
        f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, {time.strftime('%Y-%m-%d')}. Peak = the process's peak "
        "resident memory (includes ~0.5 GB of TensorFlow runtime). 'Fits' = the smallest of "
        "6/8/12/24 GB with 5% to spare. Mixed precision keeps float32 weights and optimizer "
        "state and casts them to 16 bits for each step, so it needs those copies too; what it "
        "gains on a GPU was not measured here. "
        f"{args.note}",
        "",
        "| model | optimizer | memory-saving gradients | mixed precision | peak memory | fits | "
        "tokens/s | first step (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['size']} | {r['optimizer']} | {r['recompute']} | "
                f"{r['precision']} | failed: {r['error'][:60]} | | | |"
            )
            continue
        lines.append(
            f"| {r['size']} | {r['optimizer']} | {'yes' if r['recompute'] else 'no'} | "
            f"{r['precision']} | {r['peak_gb']:.2f} GB | {fits(r['peak_gb'])} | "
            f"{r['tok_s']:.0f} | {r['first_s']:.1f} |"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_atomically(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
