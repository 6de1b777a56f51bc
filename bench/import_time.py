"""How long importing TensorFlow takes, and how much of it is ml_dtypes, for ml_dtypes versions
side by side. Writes docs/benchmarks/import-time.md.

Every command, every library call and every test process that runs a model imports TensorFlow
first, and TensorFlow imports ml_dtypes (its bfloat16 and float8 types for NumPy). Each version
is installed by pip into a scratch directory of its own (`--target`, without dependencies) and
put first on the path of fresh processes of this environment, the versions alternating round by
round (this machine drifts from minute to minute); `-X importtime` gives each module's
cumulative time. Medians of the rounds. The environment's own ml_dtypes is the row "installed".

    python bench/import_time.py [--versions 0.6.0,0.7.0] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

from _child import ROOT, bandwidth_gb_s  # bench/ is sys.path[0] when run as a script

from gpt2_tf2.files import write_atomically

OUT = os.path.join(ROOT, "docs", "benchmarks", "import-time.md")
IMPORTTIME = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|\s+(\S+)$")


def install(version: str, scratch: str) -> str:
    """A directory holding ml_dtypes `version` alone (pip --target --no-deps)."""
    target = os.path.join(scratch, version)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target]
    subprocess.run([*pip, f"ml_dtypes=={version}"], check=True, capture_output=True)
    return target


def one_import(path: str | None) -> dict:
    """Seconds of `import tensorflow` in a fresh process (wall, and -X importtime's cumulative
    figures of tensorflow and ml_dtypes), with `path` first on sys.path, and ml_dtypes' version."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)
    if path:
        env["PYTHONPATH"] = path
    code = "import tensorflow, ml_dtypes; print(ml_dtypes.__version__)"
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"import failed: {out.stderr.strip().splitlines()[-1]}")
    cumulative = {}
    for line in out.stderr.splitlines():
        m = IMPORTTIME.match(line)
        if m and m.group(2) in ("tensorflow", "ml_dtypes"):
            cumulative[m.group(2)] = int(m.group(1)) / 1e6
    return {"version": out.stdout.strip(), "wall": wall, **cumulative}


def table(rows: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| ml_dtypes | process, s | import tensorflow, s | of it ml_dtypes, s |",
        "|---|---:|---:|---:|",
    ]
    for name, runs in rows.items():
        med = {
            k: statistics.median(r[k] for r in runs) for k in ("wall", "tensorflow", "ml_dtypes")
        }
        label = runs[0]["version"] + (" (installed)" if name == "installed" else "")
        lines.append(
            f"| {label} | {med['wall']:.2f} | {med['tensorflow']:.2f} | {med['ml_dtypes']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="0.6.0,0.7.0", help="ml_dtypes versions to compare")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per version")
    parser.add_argument("--out", default=OUT, help="the Markdown file written")
    args = parser.parse_args()
    gb_s = [bandwidth_gb_s()]
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"installed": None}
        paths.update({v: install(v, scratch) for v in args.versions.split(",")})
        rows: dict[str, list[dict]] = {name: [] for name in paths}
        for round_ in range(args.rounds):
            order = list(paths) if round_ % 2 == 0 else list(paths)[::-1]
            for name in order:
                rows[name].append(one_import(paths[name]))
    gb_s.append(bandwidth_gb_s())
    text = [
        "# Importing TensorFlow, by ml_dtypes version",
        "",
        f"Written by `bench/import_time.py --versions {args.versions} --rounds {args.rounds}` on"
        f" {platform.machine()}, {os.cpu_count()} cores, memory at"
        f" {min(gb_s):.1f}-{max(gb_s):.1f} GB/s (a NumPy sum of 1 GiB, before and after),"
        f" Python {platform.python_version()}, TensorFlow {metadata.version('tensorflow')}, NumPy"
        f" {metadata.version('numpy')}. Each row: a fresh process running `import tensorflow`"
        " with that ml_dtypes first on its path, medians of the rounds (the versions alternating);"
        " *import tensorflow* and *of it ml_dtypes* are `-X importtime`'s cumulative figures.",
        "",
        *table(rows),
        "",
    ]
    write_atomically(args.out, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
