"""Our speed at two git revisions, measured interleaved on this machine, as a table in docs/.

A change to a hot path is judged by this: sampling (greedy, with temperature/top-k/top-p, plain) at
batch 1 and 8, the first call of a fresh process, and one 1 x 1024 training step at 124M, each
measured in a fresh process by the revision's own bench scripts, the two revisions alternating
(A B B A ...) because this machine drifts 10-20% from minute to minute. Ratios are medians of
the rounds, HEAD over BASE.

    python bench/compare_revisions.py --base 4197a59 [--rounds 3] [--out docs/FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from _child import ROOT, short_rev, worktree  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

MEASURES = {  # name: (script, arguments[, "head's script": HEAD's on both trees])
    "sampling": ("sample_speed.py", ["--child", "ours", "--batches", "1,8", "--repeats", "5"]),
    "sampling+settings": (
        "sample_speed.py",
        ["--child", "ours", "--batches", "1,8", "--repeats", "5", "--settings"],
    ),
    # The command line's default sampling (temperature 1, no top-k or top-p: a draw from the
    # whole vocabulary). HEAD's script on both trees (the base's may have no --plain).
    "sampling+plain": (
        "sample_speed.py",
        ["--child", "ours", "--batches", "1,8", "--repeats", "5", "--plain"],
        "head's script",
    ),
    "training": ("train_speed.py", ["--child", "ours", "--size", "124M", "--steps", "3"]),
    # The engine stepped 1 token per call, as the server's scheduler steps it: a call's cost.
    "steps": ("step_speed.py", ["--slots", "1,4", "--tokens", "1"]),
    # The engine as the server makes it (logprobs kept for the rows that ask, none asking here,
    # top-k 40), stepped 4 tokens a call: HEAD's script on both trees (the base's has no
    # --server).
    "server-steps": (
        "step_speed.py",
        ["--slots", "1,4", "--tokens", "4", "--server"],
        "head's script",
    ),
    # The same with one row of the slots asking top-p 0.9 (the whole-row fallback on random
    # weights) among rows asking top-k 40.
    "server-steps+top-p": (
        "step_speed.py",
        ["--slots", "1,4,16", "--tokens", "4", "--calls", "16", "--server", "--top_p_rows", "1"],
        "head's script",
    ),
    # One client on `serve --slots 1` against generate() (each in its own process, 124M, 64
    # tokens, top-k 40): the server's overhead. HEAD's script, each tree's package and server.
    "serving": ("serving_speed.py", ["--one", "--rounds", "5"], "head's script"),
    # TensorFlow Lite sampling: int8 and int4, greedy and top-k/top-p, batch 1 and 8.
    "tflite": ("tflite_sample_speed.py", ["--dtypes", "int8,int4"]),
    # The same in float32 (the step every dtype shares; float32 reads 4 bytes a weight).
    "tflite+float32": ("tflite_sample_speed.py", ["--dtypes", "float32"]),
    # Beam search, 4 beams, 128 tokens (no beam ends early), on xla.
    "beams": ("beam_speed.py", ["--child", "ours", "--beams", "4", "--repeats", "3"]),
}


def measure(tree: str, name: str) -> dict[str, float]:
    """{metric: value} from one fresh process of `tree`'s own bench script."""
    script, args, *own = MEASURES[name]
    path = os.path.join(tree, "bench", script)
    if own or not os.path.exists(path):  # HEAD's script on the base's package
        path = os.path.join(ROOT, "bench", script)
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, path, *args],
        env=env,
        capture_output=True,
        text=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not rows:
        raise SystemExit(f"{tree} {name}: {out.stderr.strip().splitlines()[-1:]}")
    found = {}
    for row in rows:
        if name == "training":
            found["training 1 x 1024, tokens/s"] = row["tok_s"]
            continue
        if name == "serving":  # a ratio of the same run: the machine's drift mostly cancels
            if "ratio" in row:
                found["serving: one client's server / generate()"] = row["ratio"]
            else:
                found[f"serving: {row['batch']}, tokens/s"] = row["tok_s"]
            continue
        if name == "beams":
            found[f"beam search {row['beams']} beams, tokens/s"] = row["tok_s"]
            continue
        if name.startswith("tflite"):
            key = f"tflite {row['dtype']} {row['decoding']} batch {row['batch']}, tokens/s"
            found[key] = row["tok_s"]
            continue
        found[f"{name} batch {row['batch']}, tokens/s"] = row["tok_s"]  # steps: slots x tokens
        if row.get("first_call_of_process") and name == "sampling":
            found["first call (s, lower is better)"] = row["first_s"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the revision to compare HEAD with")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each running every measure on the base and then on HEAD (default 3)",
    )
    parser.add_argument(
        "--out",
        default="docs/benchmarks/ab.md",
        help="the page to write, relative to the repository (default docs/benchmarks/ab.md)",
    )
    parser.add_argument(
        "--measures",
        default=",".join(MEASURES),
        help="which, comma-separated: what the change touches",
    )
    args = parser.parse_args()
    measures = args.measures.split(",")
    unknown = set(measures) - set(MEASURES)
    if unknown:
        raise SystemExit(f"--measures: unknown {sorted(unknown)}; one of {', '.join(MEASURES)}")
    head = short_rev()
    results: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    with worktree(args.base) as base_tree:
        for r in range(args.rounds):
            order = [("base", base_tree), ("head", ROOT)]
            for which, tree in order if r % 2 == 0 else order[::-1]:
                for name in measures:
                    for metric, value in measure(tree, name).items():
                        results[which].setdefault(metric, []).append(value)
                        print(f"round {r + 1} {which} {metric}: {value:.2f}", flush=True)
    write_table(args, head, results)


def write_table(args, head: str, results) -> None:
    lines = [
        f"# Speed: {head} against {args.base}",
        "",
        f"Written by `bench/compare_revisions.py --base {args.base} --rounds {args.rounds} "
        f"--measures {args.measures}`: "
        "random weights in the 124M shape, 16-token prompt, 128 new tokens; training one "
        "1 x 1024 step with Adam. Each number is the median of the rounds, the two revisions "
        "measured alternately in fresh processes on this machine (2 cores, no GPU).",
        "",
        f"| measure | {args.base} | {head} | {head} / {args.base} |",
        "|---|---|---|---|",
    ]
    for metric, base_values in results["base"].items():
        b, h = statistics.median(base_values), statistics.median(results["head"][metric])
        lines.append(f"| {metric} | {b:.2f} | {h:.2f} | {h / b:.3f} |")
    lines += ["", "Every round, in order (base, head):", ""]
    for metric, base_values in results["base"].items():
        pairs = ", ".join(f"{b:.3g}/{h:.3g}" for b, h in zip(base_values, results["head"][metric]))
        lines.append(f"- {metric}: {pairs}")
    os.makedirs(os.path.dirname(os.path.join(ROOT, args.out)), exist_ok=True)
    write_atomically(os.path.join(ROOT, args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
