"""The decode engine (rows joining and leaving a running batch) against the fixed-batch loop, at
the 124M shape: greedy, 16-token prompts, 128 new tokens, slots = batch = 1 and 8, in one
process, with the machine's memory bandwidth measured in the same run. Writes
docs/benchmarks/engine.md.

What it shows: what a slot engine costs per token against the loop every command runs today
(its rows at positions of their own: a scatter into the cache instead of one slice, per-row
masks), before a server is built on it (issue 31).

    python bench/engine_speed.py [--repeats 3] [--out docs/benchmarks/engine.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

PROMPT, NEW = 16, 128


def bandwidth_gb_s() -> float:
    """A NumPy sum of 1 GiB: the machine's memory bandwidth, as the guide measures it."""
    import numpy as np

    data = np.ones(2**30 // 8)
    data.sum()
    start = time.perf_counter()
    data.sum()
    return 2**30 / (time.perf_counter() - start) / 1e9


def model():
    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    return LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), GPT2(hp, seed=0))


def loop_speed(lm, prompts, repeats: int) -> float:
    from gpt2_tf2.generation.config import GenerationConfig

    config = GenerationConfig(length=NEW, temperature=0, nsamples=len(prompts))
    config = GenerationConfig.of(config, batch_size=len(prompts))
    times = []
    for _ in range(repeats + 1):  # the first compiles
        start = time.perf_counter()
        next(lm.generate_tokens(prompts, config))
        times.append(time.perf_counter() - start)
    return len(prompts) * NEW / statistics.median(times[1:])


def engine_speed(lm, prompts, repeats: int, together: bool) -> float:
    """Rows started together (`add_many`: one prefill for all) or one by one (`add` each)."""
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine

    config = GenerationConfig(length=NEW, temperature=0)
    times = []
    for _ in range(repeats + 1):
        engine = Engine(lm, len(prompts), cache_len=256)
        start = time.perf_counter()
        if together:
            engine.add_many([(p, config) for p in prompts])
        else:
            for p in prompts:
                engine.add(p, config)
        while len(engine.finished()) < len(prompts):
            engine.step(NEW)
        times.append(time.perf_counter() - start)
    return len(prompts) * NEW / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/benchmarks/engine.md")
    args = parser.parse_args()
    import numpy as np

    bandwidth = bandwidth_gb_s()
    lm = model()
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8):
        prompts = rng.integers(0, 50000, (batch, PROMPT)).tolist()
        loop = loop_speed(lm, prompts, args.repeats)
        each = engine_speed(lm, prompts, args.repeats, together=False)
        together = engine_speed(lm, prompts, args.repeats, together=True)
        rows.append(
            f"| {batch} | {loop:.1f} | {each:.1f} | {each / loop:.2f} | {together:.1f} "
            f"| {together / loop:.2f} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# The decode engine against the fixed-batch loop (124M shape, greedy)",
            "",
            f"Written by `bench/engine_speed.py --repeats {args.repeats}`: {os.cpu_count()} "
            f"cores, memory at {bandwidth:.1f} GB/s (a NumPy sum of 1 GiB, in the same run). "
            f"Random weights, {PROMPT}-token prompts, {NEW} new tokens each; tokens per second, "
            "the median of the repeats after a first call that compiles, prompts included. The "
            "engine's rows start at once, one `add` each (each prompt its own pass over the "
            "weights) or all in one `add_many` (one pass), then steps; its cache holds 256 "
            "positions.",
            "",
            "| slots = batch | loop tok/s | engine, add each: tok/s | / loop "
            "| engine, add_many: tok/s | / loop |",
            "|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
