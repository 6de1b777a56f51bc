"""Greedy sampling speed at the 124M shape: gpt2_tf2 next to its peers, each in a fresh process.

Random weights in the 124M shape (no download), a 16-token prompt, 128 new tokens forced (no
early stop), batch sizes 1, 8 and 32. 'first call' is the first generate() of a fresh process
after the model is built: tracing, compilation and the 128 tokens. Throughput is new tokens per
second, the median of `--repeats` calls after it. Peers are measured when importable (install
them with the command in bench/requirements-peers.txt). Prints one JSON line per measurement;
bench/benchmarks.py turns them into docs/benchmarks/all.md.

    python bench/sample_speed.py [--impls ours,hf_tf_xla,...] [--batches 1,8,32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from _child import add_child_flags, run_json, timed  # bench/ is sys.path[0] when run as a script

PROMPT, NEW = 16, 128
IMPLS = ("ours", "hf_tf_xla", "hf_torch", "keras_hub_xla", "keras_hub")
# Ours with sampling settings on, to show what top-k/top-p/temperature cost over greedy.
SETTINGS = {"temperature": 1.0, "top_k": 40, "top_p": 0.9}
# The command line's defaults (openai/gpt-2's sample.py): a draw from the whole vocabulary.
PLAIN = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def prompt_ids(batch: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 50000, (batch, PROMPT)).astype("int32")


def ours(settings: dict | None):
    import tensorflow as tf

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.generation.xla import programs
    from gpt2_tf2.tokenizer import Encoder

    hp = PRESETS["124M"]
    from _child import loaded  # bench/ is sys.path[0]

    model = loaded(GPT2(hp, seed=0))  # as gpt2_tf2.load keeps it
    lm = LanguageModel(hp, Encoder({"<|endoftext|>": 0}, []), model)
    kw = settings or {"temperature": 0.0}

    def generate(ids):
        rows = next(
            lm.generate_tokens(
                ids[0].tolist(), length=NEW, nsamples=len(ids), batch_size=len(ids), seed=0, **kw
            )
        )
        assert len(rows) == len(ids) and all(len(r) == NEW for r in rows)

    return generate, lambda: programs(lm)[0].experimental_get_tracing_count(), tf


def hf_tf(xla: bool, config: dict | None = None):
    """HF's TF GPT-2 (124M unless `config` gives other GPT2Config fields), random weights."""
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(**(config or {})))
    fn = tf.function(model.generate, jit_compile=True) if xla else model.generate

    def generate(ids):
        out = fn(
            tf.constant(ids),
            attention_mask=tf.ones_like(ids),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            pad_token_id=50256,
        )
        assert out.shape == (len(ids), PROMPT + NEW)

    return generate, None, tf


def hf_torch():
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
                do_sample=False,
                pad_token_id=50256,
            )
        assert tuple(out.shape) == (len(ids), PROMPT + NEW)

    return generate, None, torch


def keras_hub(xla: bool):
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=1024,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    lm.jit_compile = xla

    def generate(ids):
        # Without a preprocessor generate() fills the masked-out slots of a padded batch.
        tokens = np.zeros((len(ids), PROMPT + NEW), "int32")
        tokens[:, :PROMPT] = ids
        mask = np.zeros_like(tokens, bool)
        mask[:, :PROMPT] = True
        out = lm.generate({"token_ids": tokens, "padding_mask": mask}, stop_token_ids=None)
        assert np.asarray(out["padding_mask"]).all()

    import keras

    return generate, None, keras


def child(impl: str, batches: list[int], repeats: int, settings: bool, plain=False) -> None:
    began = time.perf_counter()
    build = {
        "ours": lambda: ours(PLAIN if plain else SETTINGS if settings else None),
        "hf_tf_xla": lambda: hf_tf(True),
        "hf_tf": lambda: hf_tf(False),
        "hf_torch": hf_torch,
        "keras_hub_xla": lambda: keras_hub(True),
        "keras_hub": lambda: keras_hub(False),
    }[impl]
    generate, traces, lib = build()
    built = time.perf_counter() - began
    for i, batch in enumerate(batches):
        ids = prompt_ids(batch)
        first, times = timed(generate, ids, repeats)
        times.sort()
        row = {
            "impl": impl + ("+plain" if plain else "+sampling" if settings else ""),
            "batch": batch,
            "tok_s": batch * NEW / (times[len(times) // 2] if times else first),
            "first_s": first,
            "first_call_of_process": i == 0,
            "build_s": built,
            "version": getattr(lib, "__version__", "?"),
        }
        if traces:
            row["traces"] = traces()
        print(json.dumps(row), flush=True)


def run(
    impl: str, batches: list[int], repeats: int, settings: bool = False, xla_cache: str = ""
) -> list[dict]:
    # xla_cache: what the command line sets up (~/.cache/gpt2_tf2/xla).
    env = {"TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={xla_cache}"} if xla_cache else {}
    args = ["--child", impl, "--batches", ",".join(map(str, batches)), "--repeats", str(repeats)]
    rows, error = run_json(__file__, args + (["--settings"] if settings else []), env)
    return rows + ([{"impl": impl, "error": error}] if error else [])


def main() -> None:
    parser = argparse.ArgumentParser()
    add_child_flags(parser, IMPLS)
    parser.add_argument(
        "--batches", default="1,8,32", help="batch sizes to time, comma-separated (default 1,8,32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed generations of each batch size (default 5)"
    )
    parser.add_argument(
        "--settings",
        action="store_true",
        help="ours with temperature 1, top-k 40 and top-p 0.9 (default: greedy)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="with --child ours: temperature 1, no top-k/top-p"
    )
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        return child(args.child, batches, args.repeats, args.settings, args.plain)
    for impl in args.impls.split(","):
        for row in run(impl, batches, args.repeats):
            print(json.dumps(row), flush=True)
        if impl == "ours":
            for row in run(impl, batches[:2], args.repeats, settings=True):
                print(json.dumps(row), flush=True)
            # A first call is one sample per process, and this machine's speed drifts from
            # minute to minute: two more fresh processes make ours a median of three.
            for _ in range(2):
                for row in run(impl, batches[:1], 0):
                    print(json.dumps({**row, "impl": "ours (first call)"}), flush=True)
            # A later run of the command line: compiled loops come from the on-disk cache that
            # an earlier run (the first call here) filled.
            with tempfile.TemporaryDirectory() as cache:
                run(impl, batches[:1], 0, xla_cache=cache)
                for row in run(impl, batches[:1], 1, xla_cache=cache):
                    print(json.dumps({**row, "impl": "ours (disk cache)"}), flush=True)


if __name__ == "__main__":
    main()
