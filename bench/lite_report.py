"""The text of docs/benchmarks/tflite.md from bench/lite_speed.py's results (kept apart from the
measuring code, which stays short)."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

TARGETS = {"124M": 2.5, "1558M": 3.0}  # issue 17: int8 batch 1 against our XLA float32


def medians(results: dict, size: str, impl: str) -> dict:
    """{batch: (tokens/s, first call s)} medians over rounds; 'peak' the median peak memory."""
    rounds = [r for r in results["sample"].get(f"{size}|{impl}", []) if r and "error" not in r[0]]
    out = {}
    for batch in sorted({row["batch"] for r in rounds for row in r}):
        rows = [row for r in rounds for row in r if row["batch"] == batch]
        out[batch] = (
            statistics.median(r["tok_s"] for r in rows),
            statistics.median(r["first_s"] for r in rows),
        )
    most = max(map(len, rounds), default=0)
    full = [r for r in rounds if len(r) == most]  # every batch size in one process
    if full:
        out["peak"] = statistics.median(r[-1]["peak_gb"] for r in full)
        out["resident"] = statistics.median(r[-1].get("resident_gb", math.nan) for r in full)
    alone = [r[0] for r in rounds if len(r) == 1 and r[0]["batch"] == 1]  # `--batches 1` runs
    if alone:
        out["peak1"] = statistics.median(r["peak_gb"] for r in alone)
    return out


def speed_table(results, size, names, batches) -> tuple[list[str], dict]:
    lines = [
        "| implementation | "
        + " | ".join(f"batch {b} (tokens/s)" for b in batches)
        + " | first call, batch 1 (s) | peak memory (GB) | resident while sampling (GB) |",
        "|---" * (len(batches) + 4) + "|",
    ]
    found = {}
    for impl, name in names.items():
        m = medians(results, size, impl)
        if not m:
            continue
        found[impl] = m
        speeds = [f"{m[b][0]:.1f}" if b in m else "-" for b in batches]
        lines.append(
            f"| {name} | {' | '.join(speeds)} | {m[batches[0]][1]:.1f} | {m['peak']:.2f} | "
            f"{m['resident']:.2f} |"
        )
    return lines, found


def measured_line(results: dict, size: str, names: dict) -> str:
    """When a size was measured, and how many interleaved rounds each implementation ran."""
    when = results.get("measured", {}).get(size, [])
    runs = f"runs started {' and '.join(when)}" if len(when) > 1 else f"a run started {when[0]}"
    rounds = [
        f"{name.removeprefix('gpt2_tf2, ')} {len(results['sample'][f'{size}|{impl}'])}"
        for impl, name in names.items()
        if f"{size}|{impl}" in results["sample"]
    ]
    return f"Measured in {runs if when else 'an earlier run'}; rounds: {', '.join(rounds)}."


def size_batches(results: dict, size: str) -> list[int]:
    """The batch sizes measured for `size` (a run with `--append --batches 1` adds rounds)."""
    rounds = [r for key, v in results["sample"].items() if key.startswith(f"{size}|") for r in v]
    return sorted({row["batch"] for r in rounds for row in r if "batch" in row})


def round_ratios(results: dict, size: str, impl: str, batch: int, other="xla") -> list[float]:
    """impl's tokens/s over other's, round by round (the two ran one after the other in each):
    rounds are matched by the run and round they came from."""
    speeds = []
    for i in (impl, other):
        rounds = results["sample"].get(f"{size}|{i}", [])
        rows = [row for r in rounds for row in r if row.get("batch") == batch]
        speeds.append({row["round"]: row["tok_s"] for row in rows})
    return [speeds[0][k] / speeds[1][k] for k in speeds[0] if k in speeds[1]]


def ratio(results: dict, size: str, impl: str, batch: int, other="xla") -> float:
    """impl's speed over other's: the median of their round-by-round ratios (the machine's speed
    drifts between rounds, so only rounds run together compare), NaN if never run together."""
    each = round_ratios(results, size, impl, batch, other)
    return statistics.median(each) if each else math.nan


def ratio_lines(results: dict, size: str, found: dict, batches) -> list[str]:
    lines = []
    xla = found.get("xla")
    if not xla:
        return lines
    for impl, label in (("tflite-int8", "TFLite int8"), ("tflite-float32", "TFLite float32")):
        if impl not in found:
            continue
        for b in batches:
            if b in found[impl] and b in xla:
                times = ratio(results, size, impl, b)
                each = ", ".join(f"{r:.2f}" for r in round_ratios(results, size, impl, b))
                target = f" (round by round {each}"
                if b == 1:
                    want = TARGETS[size] if impl == "tflite-int8" else 1.2
                    target += f"; target {want}x: {'met' if times >= want else 'missed'}"
                lines.append(f"- {size}, batch {b}: {label} {times:.2f}x XLA float32{target}).")
    peer = found.get("hf_tf_xla")
    for b in batches:
        if peer and b in peer and b in found.get("tflite-int8", {}):
            times = ratio(results, size, "tflite-int8", b, "hf_tf_xla")
            peer_name = "the best peer (HF TF, XLA)"
            lines.append(f"- {size}, batch {b}: TFLite int8 {times:.2f}x {peer_name}.")
    if "tflite-int8" in found:
        both = peak = found["tflite-int8"]["peak"]
        peak = found["tflite-int8"].get("peak1", peak)  # batch 1 alone, where a run measured it
        note = " (target under 3 GB: " + ("met" if peak < 3 else "missed") + ")"
        if peak != both:
            note = f" at batch 1 alone{note}; {both:.2f} GB with batch 8 after it"
        lines.append(
            f"- {size}: peak memory sampling with int8 {peak:.2f} GB"
            f"{note if size == '1558M' else ''}, resident while sampling "
            f"{found['tflite-int8']['resident']:.2f} GB; in float32 (XLA) {xla['peak']:.2f} GB."
        )
    return lines


def conversion_lines(results) -> list[str]:
    lines = [
        "| model | dtype | conversion (s) | .tflite (MB) | peak memory (GB) |",
        "|---|---|---|---|---|",
    ]
    for key, rows in results["convert"].items():
        size, dtype = key.split("-")
        row = rows[0]
        if "error" in row:
            lines.append(f"| {size} | {dtype} | {row['error']} | - | - |")
            continue
        parts = f" in {row['parts']} parts" if row.get("parts", 1) > 1 else ""
        lines.append(
            f"| {size} | {dtype} | {row['convert_s']:.0f} | {row['mb']:.0f}{parts} | "
            f"{row['peak_gb']:.1f} |"
        )
    return lines


def quality_lines(results) -> list[str]:
    lines = ["| model | max abs diff | mean abs diff | std of the logits |", "|---|---|---|---|"]
    for size, q in results["quality"].items():
        if "error" in q:
            continue
        lines.append(f"| {size} | {q['max']:.4f} | {q['mean']:.4f} | {q['std']:.3f} |")
    return lines


def demo_lines(results) -> list[str]:
    rows = [r for r in results["demo"] if "error" not in r]
    lines = ["| backend, dtype | en: loss (perplexity) | ru: loss (perplexity) |", "|---|---|---|"]
    for backend, dtype in (("xla", "float32"), ("tflite", "float32"), ("tflite", "int8")):
        cells = []
        for lang in ("en", "ru"):
            nll = [
                r["nll"]
                for r in rows
                if (r["backend"], r["dtype"], r["lang"]) == (backend, dtype, lang)
            ]
            cells.append(f"{nll[0]:.4f} ({math.exp(nll[0]):.2f})" if nll else "-")
        lines.append(f"| {backend}, {dtype} | {cells[0]} | {cells[1]} |")
    return lines


def cpu_features() -> str:
    """What the CPU offers int8 arithmetic, from /proc/cpuinfo's flags (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown features"
    wanted = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI"}
    wanted["amx_int8"] = "AMX int8"
    have = [name for flag, name in wanted.items() if flag in flags]
    return ", ".join(have) if have else "none of AVX2, AVX-512, VNNI or AMX"


def report(results: dict, args, names: dict, new: dict, prompt: int) -> str:
    sections = []
    for size in args.sizes.split(","):
        batches = size_batches(results, size)
        table, found = speed_table(results, size, names, batches)
        sections.append(
            f"### {size} ({prompt}-token prompt, {new[size]} new tokens)\n\n"
            + f"{measured_line(results, size, names)}\n\n"
            + "\n".join(table)
            + "\n\n"
            + "\n".join(ratio_lines(results, size, found, batches))
            + "\n"
        )
    threads = results.get("threads", {})
    thread_line = "(not measured in this run)"
    if threads:
        thread_line = (
            f"one 124M int8 step at batch 1 (144 cache columns) took {threads['1']:.1f} ms on one "
            f"thread and {threads['2']:.1f} ms on two"
        )
    if "float32" in threads:  # what a float32 token costs beside its step
        step, xla, lite = (threads[k] for k in ("float32", "token_xla", "token_tflite-float32"))
        thread_line += f""" (measured {threads["measured"]}). Measured then too: a
TFLite float32 step alone took {step:.1f} ms, {xla / step:.2f}x faster than a whole XLA float32
token ({xla:.1f} ms, its sampling inside its compiled loop), but a whole TFLite float32 token
took {lite:.1f} ms: {lite - step:.1f} ms of it outside the step. With nothing outside the step it
would gain {xla / step:.2f}x: the float32 step itself is not 1.2x faster than XLA's"""
    xla124 = medians(results, "124M", "xla").get(1, (float("nan"),))[0]
    gains = ", ".join(
        f"{ratio(results, size, 'tflite-int8', b):.1f}x at {size}, batch {b}"
        for size in ("124M", "1558M")
        for b in (1, 8)
    )
    peer_line = ""
    peer_rounds = round_ratios(results, "1558M", "hf_tf_xla", 1)
    if peer_rounds:
        speeds = [r[0]["tok_s"] for r in results["sample"]["1558M|xla"] if r[0]["batch"] == 1]
        each = ", ".join(f"{r:.1f}" for r in peer_rounds)
        peer_line = f"""
At 1558M, batch 1, the peer ran {ratio(results, "1558M", "hf_tf_xla", 1):.2f}x our XLA
float32 (round by round {each}; ours alone moved between {min(speeds):.2f} and
{max(speeds):.2f} tokens/s over its rounds; at 124M the two were level): too few quiet rounds to
call. Both read 4 bytes per weight; the peer decodes greedily, ours samples."""
    conv = results["convert"].get("1558M-int8", [{}])[0]
    conv1558 = "(not measured)"
    if "convert_s" in conv:
        conv1558 = f"{conv['convert_s']:.0f} s and {conv['peak_gb']:.1f} GB at its peak"
    features = cpu_features()
    f32 = {size: ratio(results, size, "tflite-float32", 1) for size in ("124M", "1558M")}
    return f"""# TensorFlow Lite and int8 weights: sampling speed, memory and quality

`python bench/lite_speed.py` ({time.strftime("%Y-%m-%d")}, {platform.machine()},
{os.cpu_count()} CPU cores, no GPU; interleaved rounds, medians; run in the peers'
environment, bench/requirements-peers.txt). Random weights in the release shapes. gpt2_tf2
samples at temperature 1 over the whole vocabulary (`generate_tokens` defaults), the same on
every backend; the peer decodes greedily (its cheapest). Tokens/s is the median of
{args.repeats} calls after the first. Peak memory is the process's
peak resident set (the weights built or the .tflite file mapped, and the sampling at both batch
sizes, batch 8 last, in one process); resident
while sampling is its resident set after the last call. Each size's rows come from one run,
timed under its heading (`--sizes 1558M --keep` measures one size and keeps the other's rows;
`--append` adds rounds): compare rows within a table, not across them. Machines of this kind
have run the same 1558M step 3x slower from one session to the next (XLA float32, batch 1: 3.3
tokens/s on one, 1.0 on another) and up to 2x slower from one round to the next, so each ratio
below is the median of the ratios of the rounds both ran in (each round runs every
implementation once, one after the other), given round by round too; the table's tokens/s are
medians over all of an implementation's rounds.

## Sampling

{chr(10).join(sections)}

## Conversion (once per model and dtype; the command line keeps the file in its cache)

{chr(10).join(conversion_lines(results))}

## Quality

int8 against float32 logits on a 64-token text (random weights, so the logits are small):

{chr(10).join(quality_lines(results))}

The demo model (models/demo), mean loss in nats per token on its held-out quotations, each
file scored as one text (`score`: windows of the model's 256-token context; models/demo/README.md
scores each quotation on its own, hence its lower numbers):

{chr(10).join(demo_lines(results))}

## Where the time goes, and what limits int8 here

A float32 step reads 4 bytes per weight, an int8 step one, so int8 pays most where reading the
weights is the cost ({gains}): the smaller the model and the batch, the more
of a step's time goes to costs that int8 does not shrink. Besides the TFLite step (XNNPACK's
dynamic-range kernels: activations quantized per step, int8 weights, int32 sums), a token costs
the sampling (the same compiled code the XLA loop runs: temperature 1 over the whole vocabulary,
2-3 ms) and Python between the two (calling the compiled sampling, writing the new cache column:
about 2 ms).
TFLite float32 reads the same 4 bytes per weight as XLA float32 and pays those per-token costs
besides (XLA's loop keeps sampling inside its compiled loop), so at batch 1 it gains little on
XLA, least where those costs weigh most: {f32["124M"]:.2f}x at 124M, {f32["1558M"]:.2f}x at 1558M
(the issue hoped for 1.2x). This machine's cores have {features}; {thread_line}. The attention
over the cache stays float32 and grows with the context. XLA float32 at 124M, batch 1, ran
{xla124:.1f} tokens/s in the table's run (docs/benchmarks/all.md's machine: 72.5).{peer_line}

Memory: when an interpreter is created, XNNPACK packs the weights into its own layout, reading
every page of the mapped file, so for that moment both copies are resident. A model of more
than 512 MB of weights is therefore converted and opened in parts of its blocks
(`formats/tflite.cached_parts`: 1558M in int8 as 3 files), one interpreter each, and each part's
file pages are released once XNNPACK has packed it, before the next part is opened
(`generation/tflite.release_file_pages`, madvise on Linux; a page read again, as an embedding row
is, comes back from the page cache). The peak is then the packed weights plus one part's file,
and sampling holds one copy. Measured before parts, with the file released only after packing:
3.51 GB peak, 2.34 GB while sampling. XNNPACK's weight cache (the packed weights in a mapped
file of their own) would also avoid the double read, but TensorFlow's Python interpreter does
not expose it, and LiteRT 2.3's CompiledModel, which does
(`CpuOptions.xnnpack_weight_cache_path`), binds host memory only as flat vectors and writes its
buffers whole, where the decode loop writes one cache column per step in place.

Conversion reads the checkpoint one weight at a time and runs TFLite's converter on a template
whose blocks share stand-in weights (formats/tflite_template.py): 1558M in int8, in its 3 parts,
took {conv1558} here. Run directly on all the weights, the converter alone peaked at 16 GB for 1558M
(and was killed for memory on this 24 GB machine with the model beside it).
"""
