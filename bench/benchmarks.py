"""Every benchmark in one run, side by side with the peers, rendered as docs/benchmarks/all.md.

Run it with the peers installed (bench/requirements-peers.txt); each measurement is a fresh
process of that environment's Python, one after another on an otherwise idle machine:

    python3 -m venv .venv-peers && .venv-peers/bin/pip install -e . -r bench/requirements-peers.txt
    .venv-peers/bin/python bench/benchmarks.py            # 25-40 min on 2 cores
    .venv-peers/bin/python bench/benchmarks.py --render   # the table again from the raw results
    .venv-peers/bin/python bench/benchmarks.py --only beam  # one section again, ours and peers

Raw results (one JSON object per line) go to docs/benchmarks/all.jsonl next to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from _child import run_json  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
RAW = os.path.join(ROOT, "docs", "benchmarks", "all.jsonl")
OUT = os.path.join(ROOT, "docs", "benchmarks", "all.md")
# 124M: parameters read per generated token (all weights, wte for the tied output projection)
# and training FLOPs per token (6N plus attention, Kaplan et al. 2020, at n_ctx 1024).
WEIGHT_BYTES_124M = 124.4e6 * 4
GFLOP_PER_TOKEN_FWD = 2 * 124.4e6 / 1e9
GFLOP_PER_TOKEN_TRAIN = (6 * 124.4e6 + 6 * 12 * 1024 * 768) / 1e9
PEERS = {
    "hf_tf_xla": "HF transformers TF, XLA",
    "hf_tf": "HF transformers TF (tf.function)",
    "hf_torch": "HF transformers PyTorch",
    "keras_hub_xla": "keras-hub GPT2CausalLM, XLA",
    "keras_hub": "keras-hub GPT2CausalLM, no XLA",
}


def machine_limits() -> dict:
    """This machine's memory bandwidth and matrix-product throughput, measured; and versions."""
    from importlib import metadata

    import numpy as np
    import tensorflow as tf

    a = np.ones(2**28, np.float32)  # 1 GiB
    a.sum()
    began = time.perf_counter()
    for _ in range(5):
        a.sum()
    read_gbs = 5 * a.nbytes / (time.perf_counter() - began) / 1e9
    del a
    # Streaming bandwidth as batch-1 decoding can get it: a chain of dependent matrix-vector
    # products (each token's layers run one after another) over 48 distinct 768 x 3072 float32
    # matrices (453 MB, far beyond the caches), in the fastest layout (rows contiguous), every
    # output used (XLA reads only what a slice or a sum of a product needs), in a compiled loop.
    weights = [
        tf.Variable(tf.fill([768, 3072] if i % 2 else [3072, 768], 1e-4 * (i + 1)))
        for i in range(48)
    ]

    @tf.function(jit_compile=True)
    def stream(x):
        def body(i, x):
            for w in weights:
                x = tf.tanh(tf.matmul(x, w, transpose_b=True))  # [1, 3072] or [1, 768]
            return i + 1, x

        return tf.while_loop(lambda i, x: i < 10, body, (0, x))[1]

    stream(tf.ones([1, 768]))
    began = time.perf_counter()
    stream(tf.ones([1, 768])).numpy()
    stream_gbs = 10 * 48 * 768 * 3072 * 4 / (time.perf_counter() - began) / 1e9
    x = tf.ones([1024, 768])
    w_in = tf.Variable(tf.ones([768, 3072]) * 1e-3)
    w_out = tf.Variable(tf.ones([3072, 768]) * 1e-3)

    @tf.function(jit_compile=True)
    def chain():
        h = x
        for _ in range(10):  # the MLP's two products, every output used
            h = tf.matmul(tf.matmul(h, w_in), w_out)
        return h

    chain()
    began = time.perf_counter()
    chain().numpy()
    gflops = 10 * 2 * 2 * 1024 * 768 * 3072 / (time.perf_counter() - began) / 1e9
    versions = {}
    for dist in ("tensorflow", "transformers", "tf-keras", "torch", "keras", "keras-hub"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "bench": "machine",
        "read_gbs": read_gbs,
        "stream_gbs": stream_gbs,
        "matmul_gflops": gflops,
        "versions": versions,
    }


def run(script: str, *args: str) -> list[dict]:
    rows, error = run_json(os.path.join(BENCH, script), list(args))
    return rows + ([{"bench": script, "error": error}] if error else [])


def measure(quick: bool) -> None:
    import tensorflow as tf

    repeats = "3" if quick else "5"
    rows = [
        {
            "bench": "env",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
        },
        machine_limits(),
    ]

    def add(bench, new):
        for row in new:
            row.setdefault("bench", bench)
            rows.append(row)
            print(json.dumps(row), flush=True)

    add("sample", run("sample_speed.py", "--repeats", repeats))
    for size, impls in (
        ("124M", "ours,hf_torch,hf_tf,hf_tf_xla,keras_hub_xla"),
        ("355M", "ours,ours_recompute,hf_torch"),
    ):
        add("train", run("train_speed.py", "--size", size, "--impls", impls))
    add("encode", run("encode_speed.py", "--megabytes", "20" if quick else "100"))
    add("beam", run("beam_speed.py", "--repeats", repeats))
    write_atomically(RAW, "".join(json.dumps(r) + "\n" for r in rows))


SECTIONS = {"beam": ("beam_speed.py",)}  # what --only re-measures on its own


def measure_only(section: str, quick: bool) -> None:
    """Re-measure one section, ours and the peers in one run as always, and replace its rows
    in the raw results; its rows carry their own date (the table says so)."""
    if section not in SECTIONS:
        raise SystemExit(f"--only takes one of: {', '.join(SECTIONS)}")
    with open(RAW, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    new = run(*SECTIONS[section], "--repeats", "3" if quick else "5")
    for row in new:
        row.setdefault("bench", section)
        row["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(row), flush=True)
    rows = [r for r in rows if r["bench"] != section] + new
    write_atomically(RAW, "".join(json.dumps(r) + "\n" for r in rows))


def bandwidth(limits: dict) -> float:
    return limits.get("stream_gbs", limits["read_gbs"])


def ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}x" if y else "-"


def render() -> None:
    with open(RAW, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    env = next(r for r in rows if r["bench"] == "env")
    limits = next(r for r in rows if r["bench"] == "machine")
    sample = [r for r in rows if r["bench"] == "sample" and "error" not in r]
    train = [r for r in rows if r["bench"] == "train" and "error" not in r]
    errors = [r for r in rows if "error" in r]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `bench/benchmarks.py` on {env['date']}: {env['machine']}, no GPU, "
        f"Python {env['python']}, TensorFlow {env['tensorflow']}; peers in the same environment "
        f"(bench/requirements-peers.txt): "
        + ", ".join(f"{k} {v}" for k, v in limits.get("versions", {}).items() if k != "tensorflow")
        + ". Random weights in the release shapes (no download). Every number comes from a "
        "fresh process; ours and the peers ran one after another in the same run."
        + (f" {env['note']}" if env.get("note") else ""),
        "",
        "## This machine's limits",
        "",
        f"- Memory bandwidth: **{bandwidth(limits):.1f} GB/s** streamed by a compiled chain of "
        "dependent matrix-vector products over 453 MB of weights, as a decoding step runs its "
        f"layers (a NumPy sum of 1 GiB reads {limits['read_gbs']:.1f} GB/s). "
        "Batch-1 sampling of 124M reads all "
        f"{WEIGHT_BYTES_124M / 1e9:.2f} GB of float32 weights per token, so it cannot beat "
        f"about {bandwidth(limits) / (WEIGHT_BYTES_124M / 1e9):.0f} tokens/s here.",
        f"- Matrix products (XLA, the MLP's two products at 1024 x 768 x 3072, float32): "
        f"**{limits['matmul_gflops']:.0f} GFLOP/s**. "
        f"Training needs ~{GFLOP_PER_TOKEN_TRAIN:.2f} GFLOP per token at 124M, so at most "
        f"~{limits['matmul_gflops'] / GFLOP_PER_TOKEN_TRAIN:.0f} tokens/s.",
        "",
    ]
    lines += sampling_table(sample, limits)
    lines += training_table(train)
    lines += encode_lines([r for r in rows if r["bench"] == "encode" and "error" not in r])
    lines += beam_lines([r for r in rows if r["bench"] == "beam" and "error" not in r], env)
    if errors:
        lines += ["## Failed measurements", ""]
        lines += [f"- {r.get('impl', r['bench'])}: {r['error']}" for r in errors] + [""]
    write_atomically(OUT, "\n".join(lines))
    print(f"wrote {OUT}")


def sampling_table(sample: list[dict], limits: dict) -> list[str]:
    by = {(r["impl"], r["batch"]): r for r in sample}
    batches = sorted({r["batch"] for r in sample})
    # Ours: the median first call of three fresh processes (see sample_speed.py), with its range.
    firsts_ours = sorted(
        r["first_s"]
        for r in sample
        if (r["impl"], r["batch"]) == ("ours", batches[0]) or r["impl"] == "ours (first call)"
    )
    if firsts_ours and ("ours", batches[0]) in by:
        median = firsts_ours[len(firsts_ours) // 2]
        by["ours", batches[0]] = {**by["ours", batches[0]], "first_s": median}
    impls = ["ours", "ours+sampling"] + [k for k in PEERS if any(i == k for i, _ in by)]
    lines = [
        "## Sampling (124M, greedy, 16-token prompt, 128 new tokens)",
        "",
        "Tokens/s, the median of repeated calls after the first; 'first call' is the first "
        "generate() of a fresh process after the model is built (tracing, compilation and the "
        "128 tokens at batch 1): for gpt2_tf2 the median of three processes, for the others one. "
        "'ours+sampling' is temperature 1, top-k 40, top-p 0.9.",
        "",
        "| implementation | " + " | ".join(f"batch {b}" for b in batches) + " | first call (s) |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for impl in impls:
        cells = [f"{by[impl, b]['tok_s']:.1f}" if (impl, b) in by else "-" for b in batches]
        first = by.get((impl, batches[0]), {}).get("first_s")
        name = "gpt2_tf2" + impl[4:] if impl.startswith("ours") else PEERS[impl]
        first_cell = f"{first:.1f}" if first else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {first_cell} |")
    lines += ["", "Ratios, ours / best peer at each batch size:", ""]
    for b in batches:
        peers = [(by[k, b]["tok_s"], k) for k in PEERS if (k, b) in by]
        if ("ours", b) in by and peers:
            best, name = max(peers)
            ours = by["ours", b]["tok_s"]
            bound = min(
                bandwidth(limits) / (WEIGHT_BYTES_124M / 1e9) * b,
                limits["matmul_gflops"] / GFLOP_PER_TOKEN_FWD,
            )
            beyond = (
                f" 1.2x the best peer would be {1.2 * best:.1f} tokens/s, beyond this bound"
                f" ({bound:.1f})."
                if 1.2 * best > bound
                else ""
            )
            lines.append(
                f"- batch {b}: {ratio(ours, best)} of {PEERS[name]} ({best:.1f} tokens/s); "
                f"ours is {ours / bound:.0%} of this machine's bound ({bound:.0f} tokens/s)."
                + beyond
            )
    if ("ours+sampling", 1) in by:
        for b in batches:
            if ("ours+sampling", b) in by and ("ours", b) in by:
                cost = 1 - by["ours+sampling", b]["tok_s"] / by["ours", b]["tok_s"]
                lines.append(f"- sampling settings at batch {b} cost {cost:+.0%} against greedy.")
    firsts = [(by[k, batches[0]]["first_s"], k) for k in PEERS if (k, batches[0]) in by]
    if firsts and ("ours", batches[0]) in by:
        fastest, name = min(firsts)
        warm = by.get(("ours (disk cache)", batches[0]))
        lines.append(
            f"- first call: ours {by['ours', batches[0]]['first_s']:.1f} s in a fresh process"
            + (
                f", the median of {len(firsts_ours)} ({firsts_ours[0]:.1f}-{firsts_ours[-1]:.1f} s)"
                if len(firsts_ours) > 1
                else ""
            )
            + (
                f"; {warm['first_s']:.1f} s when an earlier run left its compiled loop in the "
                "on-disk cache, as the command line sets up"
                if warm
                else ""
            )
            + "; "
            + f"the quickest peer {fastest:.1f} s ({PEERS[name]})."
        )
    return lines + [""]


def training_table(train: list[dict]) -> list[str]:
    lines = [
        "## Training (one step, batch 1 x 1024 tokens, Adam/AdamW, no dropout)",
        "",
        "| model | implementation | tokens/s | peak memory (GB) | first step (s) |",
        "|---|---|---|---|---|",
    ]
    names = {"ours": "gpt2_tf2", "ours_recompute": "gpt2_tf2 --memory_saving_gradients"}
    for r in train:
        name = names.get(r["impl"], PEERS.get(r["impl"], r["impl"]))
        lines.append(
            f"| {r['size']} | {name} | {r['tok_s']:.1f} | {r['peak_gb']:.2f} | {r['first_s']:.1f} |"
        )
    lines.append("")
    for size in sorted({r["size"] for r in train}):
        rows = {r["impl"]: r for r in train if r["size"] == size}
        peers = [r for k, r in rows.items() if k in PEERS]
        if "ours" not in rows or not peers:
            continue
        fastest = max(peers, key=lambda r: r["tok_s"])
        leanest = min(peers, key=lambda r: r["peak_gb"])
        ours = rows["ours"]
        lines.append(
            f"- {size}: {ratio(ours['tok_s'], fastest['tok_s'])} the tokens/s of the fastest "
            f"peer ({PEERS[fastest['impl']]}), at {ours['peak_gb']:.2f} GB against its "
            f"{fastest['peak_gb']:.2f} GB (leanest peer: {leanest['peak_gb']:.2f} GB)."
        )
        if "ours_recompute" in rows:
            r = rows["ours_recompute"]
            lines.append(
                f"- {size} with --memory_saving_gradients: {r['peak_gb']:.2f} GB, "
                f"{r['tok_s']:.1f} tokens/s."
            )
    return lines + [""]


def encode_lines(encode: list[dict]) -> list[str]:
    if not encode:
        return []
    r = encode[-1]
    return [
        f"## Encoding ({r['mb']:.0f} MB of generated multilingual text)",
        "",
        f"gpt2_tf2 {r['ours']:.1f} MB/s, tiktoken {r['tiktoken']:.1f} MB/s: "
        f"{ratio(r['ours'], r['tiktoken'])}; the pure-Python reference BPE {r['pure']:.2f} MB/s "
        "(see docs/benchmarks/encoding.md).",
        "",
    ]


BEAM_NAMES = {
    "ours": "gpt2_tf2",
    "hf_torch": "HF transformers PyTorch",
    "hf_tf_xla": "HF transformers TF, XLA",
    "hf_tf": "HF transformers TF",
}


def beam_lines(beam: list[dict], env: dict) -> list[str]:
    if not beam:
        return []
    beams = beam[0]["beams"]
    dated = beam[0].get("date", env["date"])
    lines = [
        f"## Beam search (124M, {beams} beams, batch 1, 16-token prompt, 128 new tokens)",
        "",
        "New tokens of the returned sequence per second, the median of repeated calls after the "
        "first (tracing and compilation); no beam may end early."
        + (
            f" Measured on {dated} (`bench/benchmarks.py --only beam`)."
            if dated != env["date"]
            else ""
        ),
        "",
        "| implementation | tokens/s | first call (s) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {BEAM_NAMES.get(r['impl'], r['impl'])} | {r['tok_s']:.1f} | {r['first_s']:.1f} |"
        for r in beam
    ]
    ours = [r for r in beam if r["impl"] == "ours"]
    peers = [r for r in beam if r["impl"] != "ours"]
    if ours and peers:
        best = max(peers, key=lambda r: r["tok_s"])
        lines += [
            "",
            f"Ours / the faster peer ({BEAM_NAMES.get(best['impl'], best['impl'])}): "
            f"{ratio(ours[0]['tok_s'], best['tok_s'])}.",
        ]
    return lines + [
        "",
        "What the other decoding features cost next to plain sampling (repetition penalty, "
        "n-gram ban, streaming, the sliding window past the context), interleaved in one "
        "process: [decoding-features.md](decoding-features.md) (`bench/decoding_speed.py`).",
        "",
        "Training on 1 and 2 replicas (`train --strategy mirrored|multi_worker`): tokens/s and "
        "memory as measured here, and the all-reduce's cost on GPUs on paper: "
        "[distributed.md](distributed.md) (`bench/distribute_speed.py`).",
        "",
        "Sampling on TensorFlow Lite, float32 and int8 weights (`--dtype int8`), against XLA and "
        "the best peer at the 124M and 1558M shapes: tokens/s, first call, peak memory, and what "
        "int8 costs in quality: [tflite.md](tflite.md) (`bench/lite_speed.py`).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--render", action="store_true", help="only rebuild the table")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 20 MB to encode")
    parser.add_argument("--limits", action="store_true", help="re-measure the machine only")
    parser.add_argument("--only", help="re-measure one section only: beam")
    args = parser.parse_args()
    if args.only:
        measure_only(args.only, args.quick)
    elif args.limits:
        with open(RAW, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rows = [machine_limits() if r["bench"] == "machine" else r for r in rows]
        write_atomically(RAW, "".join(json.dumps(r) + "\n" for r in rows))
    elif not args.render:
        measure(args.quick)
    render()


if __name__ == "__main__":
    main()
