"""Per-file test durations: the `--durations=0` lines of pytest runs summed by test file, as a
Markdown table with one column per run (docs/test-tiers.md).

    python bench/test_durations.py "before (one tier)=before.log" "default tier=default.log" ...

Each value is seconds of setup + call + teardown summed over the file's tests, on all workers
together (with `-n 2` the wall time is about half), followed by the run's wall time if the log
ends with pytest's summary line.
"""

from __future__ import annotations

import collections
import os
import re
import sys

LINE = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(tests/[^:]+)::")
SUMMARY = re.compile(r"\d+ passed.* in ([0-9.]+)s")


def read(path: str) -> tuple[dict[str, float], float | None]:
    per_file, wall = collections.defaultdict(float), None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                per_file[m.group(2)] += float(m.group(1))
            s = SUMMARY.search(line)
            if s:
                wall = float(s.group(1))
    return per_file, wall


def table(runs: list[tuple[str, str]]) -> str:
    data = [(name, *read(path)) for name, path in runs]
    files = sorted(
        {f for _, d, _ in data for f in d}, key=lambda f: -max(d.get(f, 0) for _, d, _ in data)
    )
    head = "| file | " + " | ".join(name for name, _, _ in data) + " |"
    rows = [head, "|---|" + "---:|" * len(data)]
    for f in files:
        rows.append(
            f"| {f} | " + " | ".join(f"{d[f]:.1f}" if f in d else "" for _, d, _ in data) + " |"
        )
    rows.append(
        "| **sum of test times** | "
        + " | ".join(f"{sum(d.values()):.0f}" for _, d, _ in data)
        + " |"
    )
    rows.append(
        "| **wall time** | " + " | ".join(f"{w:.0f}" if w else "" for _, _, w in data) + " |"
    )
    return "\n".join(rows)


def main(args: list[str]) -> int:
    if args in (["--help"], ["-h"]):
        print(__doc__.strip())
        return 0
    runs = [arg.split("=", 1) for arg in args]
    if not runs or any(len(run) != 2 for run in runs):
        print("error: give each run as NAME=LOG (a pytest log with --durations=0)", file=sys.stderr)
        return 2
    missing = [path for _, path in runs if not os.path.isfile(path)]
    if missing:
        print(f"error: no such log: {missing[0]} (a pytest run's output)", file=sys.stderr)
        return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
