"""What it costs a TensorFlow Lite decode engine to hand the interpreter over and take it back
(`LiteStep.save` then `LiteStep.claim`): on a server, at every join (the new prompts run on the
interpreter) and every piece of a beam search, while rows run. 124M shape, random weights,
int8, 16 slots of 1024 positions, 16 rows at column 64; the whole cache copied (every evict
before 7f3c631) against the columns the rows have written (since; and since 17fc172 put back
into buffers only as wide as those columns need). Writes
docs/benchmarks/tflite-evict.md with the machine's bandwidth measured in the same run.

    python bench/lite_evict_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _child import ROOT, bandwidth_gb_s, write_random_124m  # bench/ is sys.path[0]


def cycle(step, store, columns: int) -> float:
    """Seconds to save `columns` columns of the engine's cache and claim it back."""
    start = time.perf_counter()
    saved = step.save(columns)
    step.owner = None  # as if another had held the interpreter meanwhile
    step.claim(store, store.slots, store.cache_len, saved)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each case (default 5)"
    )
    parser.add_argument(
        "--out",
        default="docs/benchmarks/tflite-evict.md",
        help="the page to write (default docs/benchmarks/tflite-evict.md)",
    )
    args = parser.parse_args()

    import gpt2_tf2
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine

    bandwidth = bandwidth_gb_s()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "124M")
        write_random_124m(path, "bench/lite_evict_speed.py")
        lm = gpt2_tf2.load(path, dtype="int8", backend="tflite")
        engine = Engine(lm, 16)
        for i in range(16):
            engine.add(list(range(100, 116)), GenerationConfig(length=64, top_k=40, seed=i))
        engine.step(48)
        store, step = engine._store, lm.lite.step
        written = int(store.pos[~store.done].max())
        step.reserve(store.cache_len)  # the buffers as wide as the capacity, as before 17fc172
        cycle(step, store, store.cache_len)  # the buffers' first touch
        times = {"whole": [], "written": []}
        for _ in range(args.repeats):
            step.reserve(store.cache_len)  # untimed: the whole cache in the buffers again
            times["whole"].append(cycle(step, store, store.cache_len))
            times["written"].append(cycle(step, store, written))
    whole, part = (statistics.median(times[k]) * 1000 for k in ("whole", "written"))
    hp = lm.hparams  # keys and values, float32, per layer: [slots * heads, cache_len, head_dim]
    cache_gb = 2 * hp.n_layer * store.slots * hp.n_head * store.cache_len * hp.head_dim * 4 / 1e9
    write(args, bandwidth, cache_gb, written, store.cache_len, whole, part)


def write(args, bandwidth, cache_gb, written, cache_len, whole, part) -> None:
    lines = [
        "# TensorFlow Lite: handing the interpreter over while rows run",
        "",
        f"Written by `bench/lite_evict_speed.py --repeats {args.repeats}`: 2 cores, memory at "
        f"{bandwidth:.1f} GB/s (a NumPy sum of 1 GiB, in the same run). 124M shape, random "
        f"weights, int8; an engine of 16 slots x {cache_len} positions (the cache "
        f"{cache_gb:.2f} GB), 16 rows at column {written}. One cycle: the engine's cache saved "
        "(another takes the interpreter: a join's prompts, a beam search's piece, a prompt's "
        "scores) and put back when the engine next steps. Medians of the repeats.",
        "",
        "| saved | ms a cycle |",
        "|---|---:|",
        f"| the whole cache (before 7f3c631) | {whole:.1f} |",
        f"| the {written} columns written (now) | {part:.1f} |",
        "",
        f"{whole / part:.1f}x less. Since 17fc172 the buffers are put back only as wide as "
        "the written columns need (`cache_width` in gpt2_tf2/generation/tflite.py), so the "
        "zeros written after the saved columns (a column not yet written is masked, but a "
        "fresh buffer may hold NaNs, and 0 * NaN poisons the weighted sum) are a few columns, "
        "not the rest of the capacity (from 7f3c631 to 17fc172 they were: 85.6 ms a cycle "
        "against 342.6 for the whole cache, in this script's run on 7f3c631 at 17.2 GB/s).",
        "",
    ]
    with open(os.path.join(ROOT, args.out), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
