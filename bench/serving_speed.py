"""`gpt2_tf2 serve` under load: N concurrent clients (N = 1, 4, 8, 16) each streaming 64 new
tokens after a 16-token prompt, at the 124M shape (random weights), against `generate()` for
one client, with the machine's memory bandwidth measured in the same run. Writes
docs/benchmarks/serving.md.

The server runs as its own process on 127.0.0.1 (as a user runs it), sized two ways: --slots N
(as many slots as clients) and --slots 16 (one server for every load). Clients are threads of
this process, started together; each asks `min_tokens` 64 so every one gets exactly 64 tokens.
Per configuration: a warm-up round (compilations), then `--rounds` measured rounds, medians.
`generate()` runs in a fresh process too: load, one call to compile, then the measured calls.

    python bench/serving_speed.py [--rounds 2] [--out docs/benchmarks/serving.md]

--one: only one client on --slots 1 and `generate()`, each a JSON line, no page (measure
`serving` of bench/compare_revisions.py, which runs this script on both trees: the package is
the one on PYTHONPATH, the server's too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _child import ROOT, bandwidth_gb_s, write_random_124m  # bench/ is sys.path[0]

PROMPT, NEW = 16, 64
# The page's hand-written part (the targets, the history of earlier runs) starts at this line;
# a new run rewrites what is above it and keeps the rest.
NOTES = "<!-- Written by hand from here on: bench/serving_speed.py keeps it. -->"


def prompt(i: int) -> list[int]:
    return [(1000 + 37 * i + 101 * j) % 50000 for j in range(PROMPT)]


def child_generate(model: str, rounds: int) -> None:
    """One client through the library: tokens/s of `generate_tokens` (prompt included)."""
    import gpt2_tf2
    from gpt2_tf2.generation.config import GenerationConfig

    lm = gpt2_tf2.load(model)
    config = GenerationConfig(length=NEW, top_k=40, seed=0)
    next(lm.generate_tokens([prompt(0)], config))  # compiles
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        next(lm.generate_tokens([prompt(0)], config))
        times.append(time.perf_counter() - start)
    print(json.dumps({"tok_s": NEW / statistics.median(times)}))


def package_root() -> str:
    """The tree whose package is measured: PYTHONPATH's (compare_revisions), else this one."""
    return os.environ.get("PYTHONPATH") or ROOT


def start_server(model: str, slots: int):
    env = {**os.environ, "PYTHONPATH": package_root()}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2_tf2.serve",
            "--model_name",
            model,
            "--port",
            "0",
            "--slots",
            str(slots),
            "--offline",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = process.stderr.readline()
    url = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)
    import httpx2 as httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready")


def one_round(url: str, clients: int) -> dict:
    """N clients at once; {tok_s, ttft p50/p99, per-token latency median}."""
    import httpx2 as httpx

    barrier = threading.Barrier(clients + 1)
    results = [None] * clients

    def client(i):
        body = {
            "prompt": prompt(i),
            "max_tokens": NEW,
            "min_tokens": NEW,
            "top_k": 40,
            "seed": i,
            "stream": True,
        }
        # The client made before the clock starts, as a program using the `openai` client makes
        # one for its requests: httpx's top-level stream() makes one per call, and making one
        # (its TLS context) took 27-35 ms here, which the server's time to first token counted.
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            start = time.perf_counter()
            first = None
            with http.stream("POST", url + "/v1/completions", json=body) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data: {") and first is None:
                        first = time.perf_counter()
            results[i] = (start, first, time.perf_counter())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    begin = min(r[0] for r in results)
    end = max(r[2] for r in results)
    ttft = sorted(r[1] - r[0] for r in results)
    per_token = [(r[2] - r[1]) / (NEW - 1) for r in results]
    return {
        "tok_s": clients * NEW / (end - begin),
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": ttft[min(len(ttft) - 1, int(round(0.99 * (len(ttft) - 1))))],
        "per_token": statistics.median(per_token),
    }


def measure_server(model: str, slots: int, clients: int, rounds: int) -> dict:
    process, url = start_server(model, slots)
    try:
        one_round(url, clients)  # warm-up: the compilations of this shape
        runs = [one_round(url, clients) for _ in range(rounds)]
    finally:
        process.terminate()
        process.wait(60)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every load (default 2)")
    parser.add_argument(
        "--out",
        default="docs/benchmarks/serving.md",
        help="the page to write (default docs/benchmarks/serving.md)",
    )
    parser.add_argument("--one", action="store_true", help="one client only, JSON lines")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        return child_generate(args.model, args.rounds)
    bandwidth = bandwidth_gb_s()
    with tempfile.TemporaryDirectory() as scratch:
        model = os.path.join(scratch, "124M")
        write_random_124m(model, "bench/serving_speed.py")
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "generate",
                "--model",
                model,
                "--rounds",
                str(max(3, args.rounds)),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": package_root()},
        )
        alone = json.loads(out.stdout.strip().splitlines()[-1])["tok_s"]
        if args.one:
            served = measure_server(model, 1, 1, args.rounds)["tok_s"]
            for what, tok_s in (("generate()", alone), ("server", served)):
                print(json.dumps({"batch": f"one client, {what}", "tok_s": tok_s}), flush=True)
            print(json.dumps({"ratio": served / alone}), flush=True)
            return
        print(f"generate(): {alone:.1f} tok/s", flush=True)
        rows = []
        for clients in (1, 4, 8, 16):
            for slots in sorted({clients, 16}):
                r = measure_server(model, slots, clients, args.rounds)
                rows.append((clients, slots, r))
                print(clients, slots, r, flush=True)
    write(args, bandwidth, alone, rows)


def write(args, bandwidth: float, alone: float, rows) -> None:
    one = next(r["tok_s"] for c, s, r in rows if c == 1 and s == 1)
    lines = [
        "# Serving: concurrent clients on `gpt2_tf2 serve` (124M shape)",
        "",
        f"Written by `bench/serving_speed.py --rounds {args.rounds}`: 2 cores, memory at "
        f"{bandwidth:.1f} GB/s (a NumPy sum of 1 GiB, in the same run), random weights, "
        "float32 on xla. Each client streams 64 new tokens after a 16-token prompt (top-k 40, "
        "its own seed); all start together. The server is its own process on 127.0.0.1; "
        "medians of the rounds after a warm-up round.",
        "",
        f"`generate()` for one client, in a fresh process: **{alone:.1f} tok/s**.",
        "",
        "| clients | --slots | tokens/s (all clients) | vs one client on --slots 1 "
        "| time to first token p50 / p99 (s) | per-token latency (ms) |",
        "|---:|---:|---:|---:|---|---:|",
    ]
    for clients, slots, r in rows:
        lines.append(
            f"| {clients} | {slots} | {r['tok_s']:.1f} | {r['tok_s'] / one:.2f}x "
            f"| {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | {1000 * r['per_token']:.0f} |"
        )
    lines += [
        "",
        f"One client on --slots 1 against `generate()`: {one / alone:.3f} (the server's "
        "overhead: HTTP, streaming, a step per engine call).",
        "",
    ]
    from gpt2_tf2.files import write_atomically

    print("\n".join(lines))
    path = os.path.join(ROOT, args.out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    notes = ""  # what people wrote below NOTES, about this run and earlier ones: kept
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        notes = old[old.index(NOTES) :] if NOTES in old else ""
    write_atomically(path, "\n".join(lines) + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    main()
