"""Beam search speed at the 124M shape: gpt2_tf2 next to transformers' beam search (PyTorch, and
TensorFlow compiled with XLA), each in a fresh process; and ours on TensorFlow Lite.

Random weights in the 124M shape (no download), a 16-token prompt, 4 beams at batch 1, 128 new
tokens forced (no beam may end early: ours has no stop token, transformers' min_new_tokens
suppresses its end token). Throughput is new tokens of the returned sequence per second, the
median of `--repeats` calls after a first one (tracing and compilation). Prints one JSON line
per measurement; bench/benchmarks.py turns them into docs/benchmarks/all.md.

    python bench/beam_speed.py [--impls ours,hf_torch,hf_tf_xla] [--beams 4] [--repeats 3]

`ours_tflite_float32` and `ours_tflite_int8` (not in the default set) run the same search on
TensorFlow Lite; their first call includes no conversion (a warm-up process converts first).
"""

from __future__ import annotations

import argparse
import json
import os

from _child import (
    add_child_flags,
    run_json,
    timed,
    write_random_124m,
)  # bench/ is sys.path[0] when run as a script

PROMPT, NEW = 16, 128
IMPLS = ("ours", "hf_torch", "hf_tf_xla")


def prompt_ids():
    import numpy as np

    return np.random.default_rng(0).integers(0, 50000, (1, PROMPT)).astype("int32")


def ours(beams: int):
    import tensorflow as tf

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    from _child import loaded  # bench/ is sys.path[0]

    model = loaded(GPT2(hp, seed=0))  # as gpt2_tf2.load keeps it
    lm = LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), model)

    def generate(ids):
        (row,) = lm.beam_search(ids[0].tolist(), length=NEW, num_beams=beams, stop_token=-1)
        assert len(row) == NEW

    return generate, tf


def ours_tflite(beams: int, dtype: str, work: str = "/tmp/gpt2_tf2_beam_speed"):
    """The same search on TensorFlow Lite (`beams.LiteBeams`), GPT-2's vocabulary, the model
    converted once into the conversion cache (outside the timed calls)."""
    import tensorflow as tf

    import gpt2_tf2

    path = os.path.join(work, "openai-124M")
    if not os.path.exists(path):
        write_random_124m(path, "bench/beam_speed.py")
    lm = gpt2_tf2.load(path, dtype=dtype, backend="tflite")

    def generate(ids):
        (row,) = lm.beam_search(ids[0].tolist(), length=NEW, num_beams=beams, stop_token=-1)
        assert len(row) == NEW

    return generate, tf


def hf_torch(beams: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()

    def generate(ids):
        with torch.no_grad():
            out = model.generate(
                torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.ones(ids.shape, dtype=torch.long),
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                num_beams=beams,
                do_sample=False,
                pad_token_id=50256,
            )
        assert tuple(out.shape) == (1, PROMPT + NEW)

    return generate, torch


def hf_tf(beams: int, xla: bool):
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config())
    fn = tf.function(model.generate, jit_compile=True) if xla else model.generate

    def generate(ids):
        out = fn(
            tf.constant(ids),
            attention_mask=tf.ones_like(ids),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            num_beams=beams,
            do_sample=False,
            pad_token_id=50256,
        )
        assert out.shape == (1, PROMPT + NEW)

    return generate, tf


def child(impl: str, beams: int, repeats: int) -> None:
    build = {
        "ours": lambda: ours(beams),
        "ours_tflite_float32": lambda: ours_tflite(beams, "float32"),
        "ours_tflite_int8": lambda: ours_tflite(beams, "int8"),
        "hf_torch": lambda: hf_torch(beams),
        "hf_tf_xla": lambda: hf_tf(beams, True),
        "hf_tf": lambda: hf_tf(beams, False),
    }[impl]
    generate, lib = build()
    ids = prompt_ids()
    first, times = timed(generate, ids, repeats)
    times.sort()
    row = {
        "impl": impl,
        "beams": beams,
        "tok_s": NEW / (times[len(times) // 2] if times else first),
        "first_s": first,
        "version": getattr(lib, "__version__", "?"),
    }
    print(json.dumps(row), flush=True)


def run(impl: str, beams: int, repeats: int) -> list[dict]:
    args = ["--child", impl, "--beams", str(beams), "--repeats", str(repeats)]
    rows, error = run_json(__file__, args)
    return rows + ([{"impl": impl, "error": error}] if error else [])


def main() -> None:
    parser = argparse.ArgumentParser()
    add_child_flags(parser, IMPLS)
    parser.add_argument("--beams", type=int, default=4, help="beams of each search (default 4)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed searches of each implementation (default 3)"
    )
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        return child(args.child, args.beams, args.repeats)
    for impl in args.impls.split(","):
        for row in run(impl, args.beams, args.repeats):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
