"""The tflite backend's first call without TensorFlow (issue 32): from a cached conversion, with
LiteRT's interpreter installed, `gpt2_tf2.load` and greedy decoding import no TensorFlow at all
(its import alone takes 2.4-3.8 s on 2 cores), nor does the `sample` command's greedy run;
sampling then imports it, quietly, and draws what it draws with TensorFlow there from the start.
The process is the subject here (what a fresh interpreter imports), so the decoding runs in a
child process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, cli_env, run_main

CHILD = """
import json, sys
import gpt2_tf2

lm = gpt2_tf2.load(sys.argv[1], dtype="int8")
greedy = next(lm.generate_tokens([[5, 6, 7], [8]], length=12, temperature=0, batch_size=2))
print(json.dumps({"greedy": greedy, "tensorflow": "tensorflow" in sys.modules}), flush=True)
sampled = next(lm.generate_tokens([5, 6, 7], length=12, seed=7, top_k=5))
print(json.dumps({"sampled": sampled, "tensorflow": "tensorflow" in sys.modules}), flush=True)
"""


# The command as a console script runs it, and whether TensorFlow was imported by its exit.
COMMAND = """
import atexit, sys
atexit.register(lambda: print("tensorflow imported:", "tensorflow" in sys.modules, file=sys.stderr))
from gpt2_tf2.cli.sample import main
main(sys.argv[1:])
"""


@pytest.fixture()
def converted(tiny_model_dir, tmp_path, monkeypatch):
    """A private conversion cache holding the tiny model's int8 step, converted in this process
    (as a first run converts it), and what that model gives there: greedy and sampled tokens."""
    import gpt2_tf2

    cache = str(tmp_path / "tflite-cache")
    monkeypatch.setenv("GPT2_TF2_TFLITE_CACHE", cache)
    lm = gpt2_tf2.load(tiny_model_dir, dtype="int8")
    greedy = next(lm.generate_tokens([[5, 6, 7], [8]], length=12, temperature=0, batch_size=2))
    sampled = next(lm.generate_tokens([5, 6, 7], length=12, seed=7, top_k=5))
    return cache, greedy, sampled


def fresh_process(script: str, args: list, cache: str) -> subprocess.CompletedProcess:
    """`script` run by a new interpreter with `args`, the conversion cache `cache`; it must
    succeed."""
    env = cli_env({"GPT2_TF2_TFLITE_CACHE": cache})
    r = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r


def test_greedy_decoding_from_a_cached_conversion_imports_no_tensorflow(tiny_model_dir, converted):
    cache, greedy, sampled = converted
    r = fresh_process(CHILD, [tiny_model_dir], cache)
    first, second = (json.loads(line) for line in r.stdout.splitlines())
    assert first == {"greedy": greedy, "tensorflow": False}
    assert second == {"sampled": sampled, "tensorflow": True}  # imported when first needed
    noise = [line for line in r.stderr.splitlines() if line.startswith(("I0000", "W0000", "E0000"))]
    assert noise == []  # and quietly, as `gpt2_tf2.load` imports it on the xla backend


def test_the_sample_command_decodes_greedily_without_tensorflow(tiny_model_dir, converted):
    from gpt2_tf2.cli.sample import main

    cache = converted[0]
    argv = ["--model_name", tiny_model_dir, "--dtype", "int8", "--temperature", "0"]
    argv += ["--prompt", "Hello", "--length", "12", "--nsamples", "2"]
    code, want, _ = run_main(main, argv)  # in this process, TensorFlow imported
    assert code == 0
    r = fresh_process(COMMAND, argv, cache)
    assert r.stdout == want
    assert r.stderr == "tensorflow imported: False\n"  # and nothing else: quiet as ever
