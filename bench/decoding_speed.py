"""What the decoding features cost at the 124M shape, next to plain sampling, in one process.

Random weights in the 124M shape (no download), a 16-token prompt, batch 1. Each variant is
timed on its own calls after a warm-up (compilation), the variants interleaved round after
round (this machine drifts 10-20% from minute to minute); reported are the medians and each
variant's ratio to plain sampling (top-k 40) measured in the same rounds:

- sampling + repetition_penalty 1.3, + no_repeat_ngram_size 3 (issue target: <= 10% more time);
- streaming (`lm.stream_tokens`, 16 tokens per piece, as the CLI prints; target: <= 10%);
- beam search, 4 beams, 128 new tokens;
- sliding window: 3 x n_ctx new tokens (window_stride n_ctx // 2), as tokens/s.

    python bench/decoding_speed.py [--rounds 5] [--out docs/benchmarks/decoding-features.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from gpt2_tf2.files import write_atomically

NEW = 128


def build():
    import numpy as np

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    from _child import loaded  # bench/ is sys.path[0]

    model = loaded(GPT2(hp, seed=0))  # as gpt2_tf2.load keeps it
    lm = LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), model)
    prompt = np.random.default_rng(0).integers(0, 50000, 16).tolist()
    return lm, prompt


def variants(lm, prompt):
    """{name: (a call, new tokens it makes)}."""
    sample = dict(top_k=40, seed=0)

    def tokens(**kw):
        def call():
            (row,) = next(lm.generate_tokens(prompt, **kw))
            return len(row)

        return call

    def stream():
        n = 0
        for piece in lm.stream_tokens(prompt, length=NEW, **sample):
            n += len(piece)
        return n

    n_ctx = lm.hparams.n_ctx
    return {
        "sampling (top-k 40)": (tokens(length=NEW, **sample), NEW),
        "+ repetition_penalty 1.3": (tokens(length=NEW, repetition_penalty=1.3, **sample), NEW),
        "+ no_repeat_ngram_size 3": (tokens(length=NEW, no_repeat_ngram_size=3, **sample), NEW),
        "streaming (16 tokens a piece)": (stream, NEW),
        "beam search, 4 beams": (
            lambda: len(lm.beam_search(prompt, length=NEW, num_beams=4)[0]),
            NEW,
        ),
        f"sliding window, {3 * n_ctx} tokens": (tokens(length=3 * n_ctx, **sample), 3 * n_ctx),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of every variant, interleaved (default 5)"
    )
    parser.add_argument("--out", help="the Markdown page to write (default: print the rows only)")
    args = parser.parse_args()
    lm, prompt = build()
    calls = variants(lm, prompt)
    for call, _ in calls.values():  # compile everything first
        call()
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, (call, _) in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    base = "sampling (top-k 40)"
    rows = []
    for name, (_, n) in calls.items():
        median = statistics.median(times[name])
        ratios = [t / b for t, b in zip(times[name], times[base])]
        rows.append({"variant": name, "tok_s": n / median, "time_ratio": statistics.median(ratios)})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        write(args.out, rows, args.rounds)


def write(path: str, rows: list[dict], rounds: int) -> None:
    import platform

    import tensorflow as tf

    lines = [
        "# Decoding features: what they cost",
        "",
        "`python bench/decoding_speed.py --rounds "
        f"{rounds}`: 124M shape, random weights, batch 1, a 16-token prompt, {NEW} new tokens",
        "(the sliding window: three contexts' worth), on this machine "
        f"({platform.machine()}, TF {tf.__version__}). Time ratio: the median, over {rounds}",
        "interleaved rounds, of each variant's time over plain sampling's in the same round "
        "(per call; the",
        "sliding window makes more tokens, so compare its tokens/s).",
        "",
        "| variant | tokens/s | time / plain sampling |",
        "|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['tok_s']:.1f} | {row['time_ratio']:.3f} |")
    write_atomically(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
