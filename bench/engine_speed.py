"""Sampling through the decode engine against the fixed-batch loop it replaced, and streams that
join a running engine against a fixed batch, at the 124M shape (random weights), in one process
with the machine's memory bandwidth measured in the same run. Writes docs/benchmarks/engine.md.

Part 1, what `generate` costs on the engine: a call's rows as engine slots
(`sampler.EngineRows`, what `generate_tokens` runs) against the compiled fixed-batch loop
(`loop.continue_decode`, what it ran before and the SavedModel still runs), batch 1 and 8,
greedy and top-k 40 / top-p 0.9, 16-token prompt, 128 new tokens; the two alternate in rounds,
so that this machine's drift (10-20% from minute to minute) falls on both alike.

Part 2, continuous batching: N streams (N = 1, 4, 8, 16) of different lengths (64..128 new
tokens) and prompts (8..32 tokens), half starting at once and the rest joining the running
engine one every 8 steps, each leaving when done; against a fixed batch of N that runs the same
prompts to the longest length. Tokens per second are the tokens each asked for over the time.

    python bench/engine_speed.py [--rounds 3] [--out docs/benchmarks/engine.md]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

from _child import bandwidth_gb_s  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

PROMPT, NEW = 16, 128


def model():
    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    from _child import loaded  # bench/ is sys.path[0]

    model = loaded(GPT2(hp, seed=0))  # as gpt2_tf2.load keeps it
    return LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), model)


def fixed_loop(lm):
    """(contexts, config, key) -> rows of tokens, on the compiled fixed-batch loop."""
    import tensorflow as tf

    from gpt2_tf2.generation import loop
    from gpt2_tf2.generation.settings import Settings

    def run(logits, cache, context, prompt_len, length, settings, slots):
        model = functools.partial(lm.model, weights=lm.model.read_weights(lm._cpu_matvec))
        return loop.continue_decode(
            model, logits, cache, context, prompt_len, length, settings, slots
        )

    compiled = tf.function(run, jit_compile=True, autograph=False, reduce_retracing=False)

    def generate(contexts, config, key):
        n_ctx, size = lm.hparams.n_ctx, max(len(c) for c in contexts)
        width, slots = loop.bucket(size, n_ctx), loop.bucket(config.length, n_ctx)
        context = tf.constant([list(c) + [0] * (width - len(c)) for c in contexts], tf.int32)
        prompt_len = tf.constant(size)
        logits, cache = lm._prefill(context, prompt_len, min(width + slots, n_ctx), None)
        settings = Settings.make(config, key=key)
        out = compiled(
            logits, cache, context, prompt_len, tf.constant(config.length), settings, slots
        )
        return out.numpy()[:, : config.length].tolist()

    return generate


def on_engine(lm):
    from gpt2_tf2.generation.sampler import EngineRows

    def generate(contexts, config, key):
        rows = [[] for _ in contexts]
        for piece in EngineRows(lm, config, -1).sample(contexts, key):
            for row, new in zip(rows, piece):
                row += new
        return rows

    return generate


def part1(lm, rounds: int) -> list[str]:
    import numpy as np

    from gpt2_tf2.generation.config import GenerationConfig

    loop, engine = fixed_loop(lm), on_engine(lm)
    lines = []
    for batch in (1, 8):
        for name, kw in (("greedy", {"temperature": 0}), ("top-k 40, top-p 0.9", SAMPLING)):
            config = GenerationConfig(length=NEW, **kw).validate(lm.hparams.n_ctx, PROMPT)
            contexts = [np.random.default_rng(batch).integers(0, 50000, PROMPT).tolist()] * batch
            times, outs = {"loop": [], "engine": []}, {}
            for r in range(rounds + 1):  # round 0 compiles
                for which, call in (("loop", loop), ("engine", engine))[:: 1 if r % 2 else -1]:
                    start = time.perf_counter()
                    outs[which] = call(contexts, config, (0, 0))
                    if r:
                        times[which].append(time.perf_counter() - start)
            a, b = (batch * NEW / statistics.median(times[w]) for w in ("loop", "engine"))
            same = "yes" if outs["loop"] == outs["engine"] else "**no**"
            lines.append(f"| {batch} | {name} | {a:.1f} | {b:.1f} | {b / a:.3f} | {same} |")
            print(lines[-1], flush=True)
    return lines


SAMPLING = {"temperature": 1.0, "top_k": 40, "top_p": 0.9}


def streams(n: int):
    """N requests: (prompt, length, the engine step it joins at)."""
    import numpy as np

    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        prompt = rng.integers(0, 50000, int(rng.integers(8, 33))).tolist()
        joins = 0 if i < max(1, n // 2) else 8 * (i - n // 2 + 1)
        out.append((prompt, int(rng.integers(64, NEW + 1)), joins))
    return out


def joining(lm, requests, grown: bool = False) -> float:
    """Seconds for the requests to join a running engine of len(requests) slots and finish.
    grown: the server's engine (its cache as wide as its rows need, its steps over the busy
    slots: `Engine(grow_cache=True, busy_rows=True)`), else 256 positions throughout."""
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine

    engine = Engine(lm, len(requests), cache_len=256, grow_cache=grown, busy_rows=grown)
    waiting = sorted(requests, key=lambda r: r[2])
    steps, start = 0, time.perf_counter()
    while waiting or engine.busy():
        ready = [r for r in waiting if r[2] <= steps]
        if ready:
            engine.add_many(
                [(p, GenerationConfig(length=n, seed=i)) for i, (p, n, _) in enumerate(ready)]
            )
            waiting = waiting[len(ready) :]
        engine.step(8)
        steps += 8
        for slot in engine.finished():
            engine.remove(slot)
    return time.perf_counter() - start


def fixed(lm, requests) -> float:
    """Seconds for a fixed batch of the same prompts to run to the longest length."""
    from gpt2_tf2.generation.config import GenerationConfig

    length = max(n for _, n, _ in requests)
    prompts = [p for p, _, _ in requests]
    config = GenerationConfig(length=length, nsamples=1, batch_size=len(prompts))  # a row each
    start = time.perf_counter()
    next(lm.generate_tokens(prompts, config, seed=0))
    return time.perf_counter() - start


def part2(lm, rounds: int) -> list[str]:
    lines = []
    for n in (1, 4, 8, 16):
        requests = streams(n)
        tokens = sum(length for _, length, _ in requests)
        sides = {
            "fixed": fixed,
            "joining": joining,
            "grown": functools.partial(joining, grown=True),
        }
        times = {which: [] for which in sides}
        for r in range(rounds + 1):
            for which, call in list(sides.items())[:: 1 if r % 2 else -1]:
                seconds = call(lm, requests)
                if r:
                    times[which].append(seconds)
        a, b, c = (tokens / statistics.median(times[w]) for w in sides)
        # The schedule alone: the fixed batch takes `longest` steps, the joining streams until
        # the last one ends; their ratio is what the engine would reach with no overhead.
        longest = max(length for _, length, _ in requests)
        bound = longest / max(join + length for _, length, join in requests)
        lines.append(
            f"| {n} | {tokens} | {a:.1f} | {b:.1f} | {b / a:.3f} | {c:.1f} | {c / a:.3f} "
            f"| {bound:.3f} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every configuration (default 3)"
    )
    parser.add_argument(
        "--out",
        default="docs/benchmarks/engine.md",
        help="the page to write (default docs/benchmarks/engine.md)",
    )
    args = parser.parse_args()
    bandwidth = bandwidth_gb_s()
    lm = model()
    first, second = part1(lm, args.rounds), part2(lm, args.rounds)
    text = "\n".join(
        [
            "# The decode engine: sampling on it, and streams joining it (124M shape)",
            "",
            f"Written by `bench/engine_speed.py --rounds {args.rounds}`: {os.cpu_count()} cores, "
            f"memory at {bandwidth:.1f} GB/s (a NumPy sum of 1 GiB, in the same run), "
            "random weights, one process, the two sides alternating in each round after a "
            "round that compiles; tokens per second, medians of the rounds.",
            "",
            f"## Sampling on the engine against the fixed-batch loop ({PROMPT}-token prompt, "
            f"{NEW} new tokens)",
            "",
            "What `generate` runs (the call's rows as the slots of an engine) against the "
            "compiled loop it ran before (the SavedModel's), prompt included.",
            "",
            "| batch | settings | fixed-batch loop tok/s | engine tok/s | engine / loop "
            "| same tokens |",
            "|---:|---|---:|---:|---:|---|",
            *first,
            "",
            "## Streams joining a running engine against a fixed batch",
            "",
            "N streams asking 64..128 new tokens after 8..32-token prompts, sampled: half "
            "start at once, the rest join one every 8 steps, each leaves when done (`Engine`, "
            "N slots, 256 positions); against one fixed batch of the same N prompts run to "
            "the longest length (`generate_tokens`). Tokens: what the streams asked for. "
            "Schedule bound: the fixed batch's steps over the steps until the last joining "
            "stream ends, what joining / fixed would be if a step cost the same and a join "
            "nothing. Grown: the same streams on the server's engine, whose cache is as wide as "
            "its rows need and whose steps run the busy slots (`grow_cache`, `busy_rows`).",
            "",
            "| N | tokens | fixed batch tok/s | joining tok/s | joining / fixed "
            "| grown tok/s | grown / fixed | schedule bound |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *second,
            "",
        ]
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_atomically(args.out, text)


if __name__ == "__main__":
    main()
