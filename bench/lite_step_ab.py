"""Two revisions' TensorFlow Lite decode steps, timed in one process: the interpreter's `invoke`
alone, the two files' turns alternating, so that this machine's drift between processes (10-30%
between fresh processes minutes apart, more than a change to the step) falls on both alike.

Each revision converts the same random 124M model (`tflite_sample_speed.py`'s directory) in a
process of its own, with its own code (its cache entry: the key hashes the converting code);
this process then opens both files with HEAD's interpreter (`generation.tflite.make_interpreter`,
every core), fills the inputs once (`--batch` rows of one new token at column `--width`, a
cache of that width) and times `--calls` invokes of each in turn, `--rounds` times. Writes
docs/benchmarks/ab-tflite-step.md (`--out`); the end-to-end sampling A/B is
`compare_revisions.py --measures tflite`.

    python bench/lite_step_ab.py --base REV [--dtypes int4,int8,float32] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _child import ROOT, bandwidth_gb_s, short_rev, worktree  # bench/ is sys.path[0]

CHILD = """
import json, sys
from gpt2_tf2.formats import model_dir as formats
from gpt2_tf2.formats import tflite
opened = formats.open_model_dir(sys.argv[1])
paths = tflite.cached_parts(
    opened, sys.argv[2], lambda: formats.read_weights(opened), lambda message: None
)
print(json.dumps({"paths": paths}))
"""


def converted(tree: str, model_dir: str, dtype: str) -> str:
    """The .tflite file of `tree`'s code for the model at `model_dir` in `dtype`."""
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model_dir, dtype],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"{tree}: converting {dtype} failed: {last}")
    (paths,) = [json.loads(line)["paths"] for line in out.stdout.splitlines() if "paths" in line]
    if len(paths) != 1:
        raise SystemExit(f"{dtype}: {len(paths)} parts; this script times single files")
    return paths[0]


def filled(path: str, batch: int, width: int, hp):
    """An interpreter for `path`, its inputs sized and filled: `batch` rows of one token at
    column `width`, a cache of `width` columns (random: the step reads all of it)."""
    import numpy as np

    from gpt2_tf2.generation.tflite import make_interpreter

    interpreter = make_interpreter(path)
    scalars = {"tokens": [batch, 1], "pos": [1], "offsets": [batch], "logits_at": [1]}
    cache = [batch * hp.n_head, width, hp.head_dim]
    details = interpreter.get_input_details()
    kinds = {d["index"]: next((k for k in scalars if k in d["name"]), None) for d in details}
    for index, kind in kinds.items():
        interpreter.resize_tensor_input(index, scalars[kind] if kind else cache)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for index, kind in kinds.items():
        if kind is None:
            interpreter.set_tensor(index, rng.standard_normal(cache, np.float32))
        else:
            value = width if kind == "pos" else 0
            interpreter.set_tensor(index, np.full(scalars[kind], value, np.int32))
    interpreter.invoke()
    return interpreter


def timed_turns(interpreters: dict, calls: int, rounds: int) -> dict[str, list[float]]:
    """{name: milliseconds per invoke in each round}, the names' order reversed every round."""
    times = {name: [] for name in interpreters}
    for r in range(rounds):
        order = list(interpreters.items())
        for name, interpreter in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(calls):
                interpreter.invoke()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the revision to compare HEAD with")
    parser.add_argument(
        "--dtypes",
        default="int4,int8,float32",
        help="the conversions to compare, comma-separated (default int4,int8,float32)",
    )
    parser.add_argument(
        "--batches", default="1,8", help="batch sizes to time, comma-separated (default 1,8)"
    )
    parser.add_argument("--width", type=int, default=144, help="the cache's columns (16 + 128)")
    parser.add_argument("--calls", type=int, default=200, help="invokes per turn")
    parser.add_argument(
        "--rounds", type=int, default=8, help="turns of the two revisions' steps (default 8)"
    )
    parser.add_argument(
        "--work",
        default="/tmp/gpt2_tf2_tflite_sample_speed",
        help="where the models and conversions are kept between runs",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "docs/benchmarks/ab-tflite-step.md"),
        help="the page to write (default docs/benchmarks/ab-tflite-step.md)",
    )
    args = parser.parse_args()
    from tflite_sample_speed import model_dir

    from gpt2_tf2.core.hparams import PRESETS

    base, head, hp = short_rev(args.base), short_rev(), PRESETS["124M"]
    path = model_dir(args.work)
    rows, bandwidth = [], [bandwidth_gb_s()]
    with worktree(base) as tree:
        files = {
            dtype: {base: converted(tree, path, dtype), head: converted(ROOT, path, dtype)}
            for dtype in args.dtypes.split(",")
        }
    for dtype, pair in files.items():
        for batch in map(int, args.batches.split(",")):
            interpreters = {name: filled(f, batch, args.width, hp) for name, f in pair.items()}
            times = timed_turns(interpreters, args.calls, args.rounds)
            rows.append((dtype, batch, times))
            print(dtype, batch, {k: round(statistics.median(v), 3) for k, v in times.items()})
    bandwidth.append(bandwidth_gb_s())
    write(args, base, head, rows, bandwidth)


def write(args, base: str, head: str, rows: list, bandwidth: list[float]) -> None:
    lines = [
        f"# TFLite decode step: {head} against {base}",
        "",
        f"Written by `bench/lite_step_ab.py --base {args.base} --rounds {args.rounds} --calls "
        f"{args.calls} --width {args.width}`: the 124M shape with random weights, each "
        "revision's own conversion, both files open in one process and invoked in turns (the "
        f"order reversed every round), one new token a row at column {args.width}; milliseconds "
        f"per invoke, medians of the rounds. Memory at {min(bandwidth):.1f}-"
        f"{max(bandwidth):.1f} GB/s (a NumPy sum of 1 GiB, before and after).",
        "",
        f"| dtype | batch | {base} ms | {head} ms | {base} / {head} | rounds faster |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for dtype, batch, times in rows:
        old, new = statistics.median(times[base]), statistics.median(times[head])
        faster = sum(o > n for o, n in zip(times[base], times[head]))
        lines.append(
            f"| {dtype} | {batch} | {old:.3f} | {new:.3f} | {old / new:.3f} | "
            f"{faster} of {len(times[head])} |"
        )
    lines += ["", "Every round, in order (base/head, ms):", ""]
    for dtype, batch, times in rows:
        pairs = ", ".join(f"{o:.2f}/{n:.2f}" for o, n in zip(times[base], times[head]))
        lines.append(f"- {dtype} batch {batch}: {pairs}")
    from gpt2_tf2.files import write_atomically

    write_atomically(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
