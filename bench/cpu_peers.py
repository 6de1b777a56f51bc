"""gpt2_tf2 next to the engines people pick to run GPT-2 fast on a CPU: CTranslate2 and llama.cpp
(issue 32). Writes docs/benchmarks/cpu.md.

One random-weight model in the 124M shape (`--size`: another release's) with GPT-2's vocabulary
(no download), written once into `--work` in every peer's own format by that peer's own converter
(and our TFLite conversions made, so that no row's first call converts):
- OpenAI's layout (ours), then Hugging Face's (`python -m gpt2_tf2.convert to-hf`);
- CTranslate2: its `TransformersConverter` from the Hugging Face directory, float32 and int8;
- llama.cpp: its `convert_hf_to_gguf.py` (from the llama-cpp-python source release installed
  here, which vendors llama.cpp) at f32, then `llama_model_quantize` to q8_0 and q4_0.

Ours run float32 on both backends (XLA, the default, and TFLite, whose first call from a cached
conversion imports no TensorFlow), int8 and int4 on TFLite. Every implementation runs in a fresh
process: greedy decoding of 128 new tokens (`--new`) after
a 16-token prompt (no early stop), at batch 1, 8 and 32 (llama.cpp at batch 1 through
llama-cpp-python's generate, at 8 and 32 through llama.cpp's C API: a sequence per row in one
context, as llama.cpp's examples/batched). The f32 peers' greedy tokens are compared with
ours before any speed is reported. The rounds interleave the implementations, every other
round in reverse order, so that the machine's drift falls on all; the table gives medians,
ratios to ours (a target's: the median of each round's own), and each row as a share
of the memory-bandwidth bound (measured in the same run): at batch 1 a token reads every
weight once, so the bound is bandwidth / bytes of weights. After the rounds, each of our rows
runs its first call once more with empty caches, and CTranslate2's converter runs once, timed
(`cold_firsts`; `--no-cold` skips them).

    python bench/cpu_peers.py [--rounds 2] [--size 124M] [--new 128] [--work DIR] [--no-cold]
        [--impls NAME,...] [--out docs/benchmarks/cpu.md]

The page keeps a section per model size between marker lines: a run rewrites its own size's
section (appended if the page has none) and leaves the rest of the page as it is.

Peers: pip install ctranslate2 llama-cpp-python gguf (bench/requirements-peers.txt).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time

from _child import (
    ROOT,
    add_child_flags,
    bandwidth_gb_s,
    run_json,
    timed,
    write_random_124m,
)  # bench/ is sys.path[0]

PROMPT, NEW, BATCHES = 16, 128, (1, 8, 32)
SIZE = "124M"  # the model's shape; NEW and SIZE are set from the flags (main)
# The batch sizes each runs.
IMPLS = {
    "gpt2_tf2 float32 (xla)": BATCHES,
    "gpt2_tf2 float32 (tflite)": BATCHES,
    "gpt2_tf2 int8 (tflite)": BATCHES,
    "gpt2_tf2 int4 (tflite)": BATCHES,
    "ctranslate2 float32": BATCHES,
    "ctranslate2 int8": BATCHES,
    "llama.cpp f32": BATCHES,
    "llama.cpp q8_0": BATCHES,
    "llama.cpp q4_0": BATCHES,
}


def prompt_ids(batch: int) -> list[list[int]]:
    """One 16-token prompt, the same in every row (as bench/sample_speed.py)."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 50000, (1, PROMPT)).tolist() * batch


# ---- the model in every format ---------------------------------------------------------------


def paths_in(work: str) -> dict[str, str]:
    """Each format's path under `work`."""
    return {
        "openai": os.path.join(work, "openai"),
        "hf": os.path.join(work, "hf"),
        "ct2_float32": os.path.join(work, "ct2-float32"),
        "ct2_int8": os.path.join(work, "ct2-int8"),
        "gguf_f32": os.path.join(work, "gpt2-f32.gguf"),
        "gguf_q8_0": os.path.join(work, "gpt2-q8_0.gguf"),
        "gguf_q4_0": os.path.join(work, "gpt2-q4_0.gguf"),
    }


def prepare(work: str) -> dict[str, str]:
    """Each format's path under `work`, written if missing."""
    paths = paths_in(work)
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(paths["openai"]):
        write_random_124m(paths["openai"], "bench/cpu_peers.py", SIZE)
    if not os.path.exists(paths["hf"]):
        _python(["-m", "gpt2_tf2.convert", "to-hf", "--model_name", paths["openai"]]
                + ["--out", paths["hf"]])  # fmt: skip
    import ctranslate2

    for quantization in ("float32", "int8"):
        out = paths[f"ct2_{quantization}"]
        if not os.path.exists(out):
            converter = ctranslate2.converters.TransformersConverter(paths["hf"])
            converter.convert(out, quantization=quantization)
    if not os.path.exists(paths["gguf_f32"]):
        script = _llama_converter(work)
        gguf_py = os.path.join(os.path.dirname(script), "gguf-py")
        _python([script, paths["hf"], "--outtype", "f32", "--outfile", paths["gguf_f32"]],
                env={"PYTHONPATH": gguf_py})  # fmt: skip
    for kind in ("q8_0", "q4_0"):
        if not os.path.exists(paths[f"gguf_{kind}"]):
            _quantize(paths["gguf_f32"], paths[f"gguf_{kind}"], kind)
    for dtype in ("float32", "int8", "int4"):  # our converter's work, as the peers' is above
        load = f"gpt2_tf2.load({paths['openai']!r}, dtype={dtype!r}, backend='tflite')"
        _python(["-c", f"import gpt2_tf2; {load}"])
    return paths


def _python(args: list[str], env: dict | None = None) -> None:
    full = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if env:
        full["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + full["PYTHONPATH"]
    done = subprocess.run([sys.executable, *args], env=full, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-2000:]}")


def _llama_converter(work: str) -> str:
    """llama.cpp's convert_hf_to_gguf.py of the llama.cpp that the installed llama-cpp-python
    vendors (its source release, from PyPI), unpacked under `work`."""
    from importlib import metadata

    version = metadata.version("llama-cpp-python")
    root = os.path.join(work, f"llama_cpp_python-{version}", "vendor", "llama.cpp")
    script = os.path.join(root, "convert_hf_to_gguf.py")
    if os.path.exists(script):
        return script
    sdist = os.path.join(work, "sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "-d", sdist, f"llama-cpp-python=={version}"],
        check=True, capture_output=True,
    )  # fmt: skip
    (archive,) = glob.glob(os.path.join(sdist, "llama_cpp_python-*.tar.gz"))
    wanted = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        members = [
            m for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)
        ]  # fmt: skip
        tar.extractall(work, members, filter="data")
    return script


def _quantize(source: str, out: str, kind: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.nthread = 2
    if llama_cpp.llama_model_quantize(source.encode(), out.encode(), params) != 0:
        raise SystemExit(f"llama_model_quantize to {kind} failed")


# ---- one implementation, in its own process ----------------------------------------------------


def ours(paths: dict, dtype: str, backend: str):
    import gpt2_tf2

    lm = gpt2_tf2.load(paths["openai"], dtype=dtype, backend=backend)

    def generate(ids):
        n = len(ids)
        return next(lm.generate_tokens(ids[0], length=NEW, nsamples=n, batch_size=n, temperature=0))

    return generate


def ctranslate2_impl(paths: dict, quantization: str):
    import ctranslate2

    generator = ctranslate2.Generator(
        paths[f"ct2_{quantization}"], device="cpu", compute_type=quantization, intra_threads=2
    )
    vocab = json.load(open(os.path.join(paths["hf"], "vocab.json"), encoding="utf-8"))
    pieces = {i: piece for piece, i in vocab.items()}

    def generate(ids):
        results = generator.generate_batch(
            [[pieces[i] for i in row] for row in ids],
            max_length=NEW,
            min_length=NEW,
            sampling_topk=1,
            include_prompt_in_result=False,
        )
        return [[vocab[t] for t in r.sequences[0]] for r in results]

    return generate


def llama_impl(paths: dict, kind: str):
    """Batch 1 through llama-cpp-python's own generate (its sampler chain at top-k 1); larger
    batches through llama.cpp's C API as its examples/batched does: one context holding a
    sequence per row, a batch of every row's next token per llama_decode, argmax of the logits."""
    from llama_cpp import Llama

    llm = Llama(
        paths[f"gguf_{kind}"], n_ctx=PROMPT + NEW, n_threads=2, n_threads_batch=2, verbose=False
    )
    batched = {}

    def generate(ids):
        if len(ids) > 1:
            if len(ids) not in batched:
                batched[len(ids)] = LlamaBatched(llm, len(ids))
            return batched[len(ids)].generate(ids)
        (row,) = ids
        out = []
        for token in llm.generate(row, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)  # llm.generate does not stop at the end-of-text token
            if len(out) == NEW:
                break
        return [out]

    return generate


class LlamaBatched:
    """Greedy decoding of `rows` sequences at once on `llm`'s model, in a context of its own."""

    def __init__(self, llm, rows: int):
        import llama_cpp as lc

        params = lc.llama_context_default_params()
        params.n_ctx = rows * (PROMPT + NEW)  # each sequence its own part of the cache
        params.n_batch = params.n_ubatch = rows * PROMPT
        params.n_seq_max = rows
        params.n_threads = params.n_threads_batch = 2
        self.lc, self.rows = lc, rows
        self.ctx = lc.llama_init_from_model(llm._model.model, params)
        self.batch = lc.llama_batch_init(rows * PROMPT, 0, rows)
        vocab = lc.llama_model_get_vocab(llm._model.model)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)

    def _decode(self, rows: list[list[int]], start: int):
        """Each row's tokens at positions start.. of its sequence; the logits after each row's
        last token [rows, vocab]."""
        import numpy as np

        b, i = self.batch, 0
        for seq, tokens in enumerate(rows):
            for j, token in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i] = token, start + j, 1
                b.seq_id[i][0], b.logits[i] = seq, j == len(tokens) - 1
                i += 1
        b.n_tokens = i
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise SystemExit("llama_decode failed")
        logits = self.lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(logits, shape=(len(rows), self.n_vocab))

    def generate(self, ids):
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        logits = self._decode([list(r) for r in ids], 0)
        out = [[] for _ in ids]
        for step in range(NEW):
            chosen = logits.argmax(axis=-1).tolist()
            for row, token in zip(out, chosen):
                row.append(token)
            if step + 1 < NEW:
                logits = self._decode([[t] for t in chosen], len(ids[0]) + step)
        return out


def peak_mib() -> float:
    """This process's peak resident memory so far (VmHWM: ru_maxrss after a fork and exec
    still counts the parent's, here its 1 GiB bandwidth array)."""
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def child(impl: str, work: str, repeats: int, batches=None) -> None:
    paths = paths_in(work)  # written by the parent: a child imports only its own library
    began = time.perf_counter()
    build = {
        "gpt2_tf2 float32 (xla)": lambda: ours(paths, "float32", "xla"),
        "gpt2_tf2 float32 (tflite)": lambda: ours(paths, "float32", "tflite"),
        "gpt2_tf2 int8 (tflite)": lambda: ours(paths, "int8", "tflite"),
        "gpt2_tf2 int4 (tflite)": lambda: ours(paths, "int4", "tflite"),
        "ctranslate2 float32": lambda: ctranslate2_impl(paths, "float32"),
        "ctranslate2 int8": lambda: ctranslate2_impl(paths, "int8"),
        "llama.cpp f32": lambda: llama_impl(paths, "f32"),
        "llama.cpp q8_0": lambda: llama_impl(paths, "q8_0"),
        "llama.cpp q4_0": lambda: llama_impl(paths, "q4_0"),
    }[impl]
    generate = build()
    loaded = time.perf_counter() - began
    for batch in batches or IMPLS[impl]:
        ids = prompt_ids(batch)
        first, times = timed(generate, ids, repeats)
        tokens = generate(ids)
        assert len(tokens) == batch and all(len(r) == NEW for r in tokens), impl
        row = {"impl": impl, "batch": batch, "tok_s": batch * NEW / statistics.median(times)}
        if batch == 1:  # load and the first call's tracing, compiling and 128 tokens
            row.update(first_s=loaded + first, tokens=tokens[0])
        row["peak_mib"] = peak_mib()
        print(json.dumps(row), flush=True)


# ---- the page ----------------------------------------------------------------------------------


def main() -> None:
    global NEW, SIZE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_child_flags(parser, IMPLS)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of every implementation (default 2)"
    )
    parser.add_argument(
        "--no-cold",
        action="store_true",
        help="skip the run of each of our rows with empty caches after the rounds (its first "
        "call converts or compiles: minutes at 1558M)",
    )
    parser.add_argument("--batches", help="a child's batch sizes, comma-separated (default all)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs of each batch size in a round (default 3)",
    )
    parser.add_argument("--size", default="124M", help="the release whose shape the model has")
    parser.add_argument("--new", type=int, default=NEW, help="tokens decoded after the prompt")
    parser.add_argument("--work", help="default: /tmp/gpt2_tf2_cpu_peers (-SIZE but for 124M)")
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "docs", "benchmarks", "cpu.md"),
        help="the page whose section for --size this run rewrites (default docs/benchmarks/cpu.md)",
    )
    args = parser.parse_args()
    NEW, SIZE = args.new, args.size
    suffix = "" if SIZE == "124M" else f"-{SIZE}"
    args.work = args.work or f"/tmp/gpt2_tf2_cpu_peers{suffix}"
    if args.child:
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
        return child(args.child, args.work, args.repeats, batches)
    impls = args.impls.split(",")
    unknown = [name for name in impls if name not in IMPLS]
    if unknown:
        parser.error(f"--impls: no implementation named {', '.join(map(repr, unknown))}")
    paths = prepare(args.work)
    m = Measured(bandwidth=[bandwidth_gb_s()])
    for r in range(args.rounds):
        m.rounds.append({})
        # Every other round in reverse: the memory's drift over a round (minutes) favours
        # neither the rows run early nor those run late.
        for impl in impls if r % 2 == 0 else impls[::-1]:
            rows, error = run_json(__file__, child_args(impl, args, args.repeats))
            if error:
                m.errors[impl] = error
            for row in rows:
                m.rounds[-1][(impl, row["batch"])] = row["tok_s"]
                m.peaks[impl] = max(m.peaks.get(impl, 0), row["peak_mib"])
                if "first_s" in row:
                    m.firsts.setdefault(impl, []).append(row["first_s"])
                    m.tokens[impl] = row["tokens"]
            print(json.dumps({"impl": impl, "rows": len(rows), "error": error}), flush=True)
        m.bandwidth.append(bandwidth_gb_s())
    m.colds = {} if args.no_cold else cold_firsts(impls, m, args, paths)
    section = render(impls, m, args.rounds, paths)
    from gpt2_tf2.files import write_atomically

    old = open(args.out, encoding="utf-8").read() if os.path.exists(args.out) else None
    write_atomically(args.out, merge_section(old, section).encode("utf-8"))
    print(section)


def child_args(impl: str, args, repeats: int) -> list[str]:
    """The flags of a child process that runs `impl` as this run's flags say."""
    flags = ["--work", args.work, "--repeats", str(repeats), "--size", SIZE, "--new", str(NEW)]
    return ["--child", impl, *flags]


def cold_firsts(impls: list[str], m: Measured, args, paths: dict) -> dict[str, float]:
    """A first call from nothing cached. Ours: each row's first call at batch 1 once more, in a
    fresh process given empty cache directories (the XLA programs compiled, the TFLite step
    converted, in the call). CTranslate2's: its converter run in a fresh process (its Python
    API, as `ct2-transformers-converter`), plus its last first call: it keeps no cache, and a
    user converts once before the first call, as ours converts within it."""
    import tempfile

    colds = {}
    for impl in impls:
        with tempfile.TemporaryDirectory(prefix="gpt2_tf2_cold_") as empty:
            if impl.startswith("gpt2_tf2"):
                env = {
                    "GPT2_TF2_XLA_CACHE": os.path.join(empty, "xla"),
                    "GPT2_TF2_TFLITE_CACHE": os.path.join(empty, "tflite"),
                }
                rows, _ = run_json(__file__, [*child_args(impl, args, 1), "--batches", "1"], env)
                if rows and "first_s" in rows[0]:
                    colds[impl] = rows[0]["first_s"]
            elif impl.startswith("ctranslate2") and m.firsts.get(impl):
                began = time.perf_counter()
                try:
                    _python(["-c", CT2_CONVERT.format(paths["hf"], empty, impl.split()[1])])
                except SystemExit as e:  # the rounds' results are still written
                    print(f"{impl}: its converter failed: {e}", file=sys.stderr)
                    continue
                colds[impl] = time.perf_counter() - began + m.firsts[impl][-1]
        print(json.dumps({"impl": impl, "cold": colds.get(impl)}), flush=True)
    return colds


CT2_CONVERT = (
    "import ctranslate2; ctranslate2.converters.TransformersConverter({!r})"
    ".convert({!r}, quantization={!r}, force=True)"
)


TITLE = "# GPT-2 on a CPU: gpt2_tf2 and the engines people pick for it"


def merge_section(page: str | None, section: str) -> str:
    """`page` with this size's section (between its marker lines) replaced by `section`, or
    `section` appended; what else the page holds is kept as it is."""
    start = f"<!-- bench/cpu_peers.py --size {SIZE}: from here -->"
    end = f"<!-- bench/cpu_peers.py --size {SIZE}: to here -->"
    block = f"{start}\n{section.strip()}\n{end}"
    if page is None:
        return f"{TITLE}\n\n{block}\n"
    if start in page and end in page[page.index(start) :]:
        before, rest = page.split(start, 1)
        return before + block + rest.split(end, 1)[1]
    return f"{page.rstrip()}\n\n{block}\n"


def weight_bytes(impl: str, paths: dict) -> int:
    """The bytes of weights a token reads at batch 1: the model as each format stores it."""
    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.formats import tflite

    hp = PRESETS[SIZE]
    if impl.startswith("gpt2_tf2"):
        dtype = impl.split()[1]  # "gpt2_tf2 int4 (tflite)"
        return tflite.weight_bytes(hp, dtype) if dtype != "float32" else hp.num_params() * 4
    if impl.startswith("ctranslate2"):
        return os.path.getsize(os.path.join(paths["ct2_" + impl.split()[1]], "model.bin"))
    return os.path.getsize(paths["gguf_" + impl.split()[1]])


@dataclasses.dataclass
class Measured:
    """What the rounds measured: tokens/s per (implementation, batch) in each round (`rounds`:
    a target's ratio is taken within a round, its two rows minutes apart at most), first calls
    per implementation (a round each; `colds`: ours with empty caches), greedy tokens at batch
    1, errors, peak memory, and the bandwidth before and after each round."""

    firsts: dict = dataclasses.field(default_factory=dict)
    colds: dict = dataclasses.field(default_factory=dict)
    tokens: dict = dataclasses.field(default_factory=dict)
    errors: dict = dataclasses.field(default_factory=dict)
    peaks: dict = dataclasses.field(default_factory=dict)
    bandwidth: list = dataclasses.field(default_factory=list)
    rounds: list = dataclasses.field(default_factory=list)  # {(impl, batch): tok/s} per round

    def speeds(self, key) -> list:
        """The tokens/s of `key` (implementation, batch), one per round that ran it."""
        return [r[key] for r in self.rounds if key in r]


def render(impls, m: Measured, rounds: int, paths) -> str:
    from gpt2_tf2.core.hparams import PRESETS

    params = PRESETS[SIZE].num_params()
    bandwidth = m.bandwidth
    gb_s = statistics.median(bandwidth)
    base = "gpt2_tf2 float32 (xla)"

    def med(key):
        return statistics.median(m.speeds(key)) if m.speeds(key) else None

    def cell(value, fmt="{:.1f}"):
        return fmt.format(value) if value is not None else "-"

    def ratio(value, batch):  # to gpt2_tf2 float32 at the same batch
        return cell(value and med((base, batch)) and value / med((base, batch)), "{:.2f}x")

    reference = m.tokens.get(base)
    lines = [
        f"## {SIZE} shape",
        "",
        f"Written by `bench/cpu_peers.py --rounds {rounds} --size {SIZE} --new {NEW}` on "
        f"{platform.machine()}, "
        f"{os.cpu_count()} cores, memory at {min(bandwidth):.1f}-{max(bandwidth):.1f} GB/s "
        "(a NumPy sum of 1 GiB, measured before and after each round). Random weights, GPT-2's "
        f"vocabulary, greedy decoding of {NEW} new tokens after a {PROMPT}-token prompt, each "
        "implementation in a fresh process, the rounds interleaved (every other one in "
        "reverse order); medians. *first call*: "
        f"importing, loading the model and the first {NEW} tokens (tracing, compiling), in the "
        "last round: on-disk caches as the earlier rounds left them (one round: our XLA "
        "programs compiled in it; the TFLite conversions are made before, as the peers'). "
        "*empty caches*: our rows' first call once more after the rounds, in a process given "
        "empty cache directories (the XLA programs compiled, the TFLite step converted in it); "
        "CTranslate2's: its converter's run in a fresh process plus its first call (it keeps "
        "no cache: its user converts once, before). "
        "*bound*: at "
        "batch 1 a token reads every weight once, so no implementation beats bandwidth / bytes "
        "of weights; the share is the row's tokens/s over that (the sum runs on one core, and "
        "two cores read faster: a share above 100% is this bound's, not a measuring error). "
        "*peak memory*: the process's maximum resident set, all batches. Quantized rows' "
        "greedy tokens part from float32's after a while by design (their "
        "logits differ in the last digits, and a random model has near ties).",
        "",
        "| implementation | bytes of weights / parameter | batch 1 tok/s | vs gpt2_tf2 float32 "
        "| share of bound | batch 8 tok/s | vs gpt2_tf2 float32 | batch 32 tok/s "
        "| vs gpt2_tf2 float32 | first call (s) | first call, empty caches (s) "
        "| peak memory (MiB) | greedy tokens = gpt2_tf2 float32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for impl in impls:
        one, eight, many = med((impl, 1)), med((impl, 8)), med((impl, 32))
        size = weight_bytes(impl, paths)
        bound = gb_s * 1e9 / size
        same = "-"
        if impl in m.tokens and reference is not None:
            agree = next(
                (i for i, (a, b) in enumerate(zip(m.tokens[impl], reference)) if a != b), NEW
            )
            same = "yes" if agree == NEW else f"first {agree} of {NEW}"
        first = m.firsts[impl][-1] if impl in m.firsts else None  # the last round: caches filled
        failed = f" (failed: {m.errors[impl]})" if impl in m.errors else ""
        lines.append(
            f"| {impl} | {size / params:.2f} | {cell(one)} "
            f"| {ratio(one, 1)} "
            f"| {cell(one and one / bound, '{:.0%}')} | {cell(eight)} "
            f"| {ratio(eight, 8)} | {cell(many)} | {ratio(many, 32)} "
            f"| {cell(first)} | {cell(m.colds.get(impl))} "
            f"| {cell(m.peaks.get(impl), '{:.0f}')} | {same}{failed} |"
        )
    lines += ["", *targets(m), "", "Versions: " + ", ".join(_versions()), ""]
    return "\n".join(lines)


# Issue 32's targets: (what, our row, peer, what is compared, at least ours / peer); compared:
# a batch size's tokens/s, "first" (the last round's first call) or "cold" (`cold_firsts`).
F32, F32_LITE = "gpt2_tf2 float32 (xla)", "gpt2_tf2 float32 (tflite)"
INT8, INT4 = "gpt2_tf2 int8 (tflite)", "gpt2_tf2 int4 (tflite)"
CT2_F32, CT2_INT8 = "ctranslate2 float32", "ctranslate2 int8"
TARGETS = [
    ("int4 at batch 1 >= 2x CTranslate2 int8", INT4, CT2_INT8, 1, 2.0),
    ("int4 at batch 1 >= 1.2x llama.cpp q4_0", INT4, "llama.cpp q4_0", 1, 1.2),
    ("float32 at batch 8 >= 1.2x CTranslate2 float32", F32, CT2_F32, 8, 1.2),
    ("int8 at batch 8 >= 1.3x CTranslate2 int8", INT8, CT2_INT8, 8, 1.3),
    ("int4 at batch 8 ahead of CTranslate2 int8", INT4, CT2_INT8, 8, 1.0),
    ("int4 at batch 8 ahead of llama.cpp q8_0", INT4, "llama.cpp q8_0", 8, 1.0),
    ("int4 at batch 8 ahead of llama.cpp q4_0", INT4, "llama.cpp q4_0", 8, 1.0),
    ("first call, float32 (xla): no slower than CTranslate2's", F32, CT2_F32, "first", 1),
    ("first call, float32 (tflite): the same", F32_LITE, CT2_F32, "first", 1),
    ("first call, int8: no slower than CTranslate2's", INT8, CT2_INT8, "first", 1),
    ("empty caches, float32 (xla): at most 2x CTranslate2's", F32, CT2_F32, "cold", 0.5),
    ("empty caches, float32 (tflite): the same", F32_LITE, CT2_F32, "cold", 0.5),
    ("empty caches, int8: at most 2x CTranslate2's", INT8, CT2_INT8, "cold", 0.5),
]


def targets(m: Measured) -> list[str]:
    """Issue 32's targets as measured in this run: the ratio and whether it is met."""
    lines = [
        "Issue 32's targets in this run (speed: ours / peer's tokens/s, the median of each "
        "round's ratio, and its range over the rounds; first call: the peer's seconds / ours, "
        "so that above 1 is ours faster in both):",
        "",
        "| target | ratio | rounds | met |",
        "|---|---:|---|---|",
    ]

    def last(firsts, impl):  # the last round's: caches as the earlier rounds left them
        return firsts[impl][-1] if firsts.get(impl) else None

    def quotient(a, b):
        return a / b if a and b else None

    for what, mine, peer, compared, least in TARGETS:
        spread = "-"
        if compared == "first":  # seconds: the peer's over ours
            ratio = quotient(last(m.firsts, peer), last(m.firsts, mine))
        elif compared == "cold":
            ratio = quotient(m.colds.get(peer), m.colds.get(mine))
        else:  # paired within each round: the machine drifts 10-20% from minute to minute
            each = [quotient(r.get((mine, compared)), r.get((peer, compared))) for r in m.rounds]
            each = [x for x in each if x is not None]
            ratio = statistics.median(each) if each else None
            spread = f"{min(each):.2f}-{max(each):.2f}" if each else "-"
        met = "-" if ratio is None else ("yes" if ratio >= least else "no")
        shown = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {what} | {shown} | {spread} | {met} |")
    return lines


def _versions() -> list[str]:
    from importlib import metadata

    out = []
    for name in ("tensorflow", "ctranslate2", "llama-cpp-python"):
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return out


if __name__ == "__main__":
    main()
