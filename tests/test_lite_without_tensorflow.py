"""The tflite backend's first call without TensorFlow (issue 32): from a cached conversion, with
LiteRT's interpreter installed, `gpt2_tf2.load` and greedy decoding import no TensorFlow at all
(its import alone takes 2.4-3.8 s on 2 cores), nor does the `sample` command's greedy run;
sampling then imports it, quietly, and draws what it draws with TensorFlow there from the start.
The process is the subject here (what a fresh interpreter imports), so the decoding runs in a
child process."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import run_cli, run_main

CHILD = """
import json, sys
import gpt2_tf2

lm = gpt2_tf2.load(sys.argv[1], dtype=sys.argv[2], backend="tflite")
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


@pytest.fixture(scope="module")
def conversions(tiny_model_dir, tmp_path_factory):
    """`conversions(dtype)`: a private conversion cache holding the tiny model's step in `dtype`
    (int8 or float32), converted once in this process (as a first run converts it), and what
    that model gives there: greedy and sampled tokens. Tests that load from it set
    GPT2_TF2_TFLITE_CACHE to it."""
    import gpt2_tf2

    made = {}

    def converted(dtype: str):
        if dtype not in made:
            cache = str(tmp_path_factory.mktemp(f"tflite-cache-{dtype}"))
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("GPT2_TF2_TFLITE_CACHE", cache)
                lm = gpt2_tf2.load(tiny_model_dir, dtype=dtype, backend="tflite")
                rows = [[5, 6, 7], [8]]
                greedy = next(lm.generate_tokens(rows, length=12, temperature=0, batch_size=2))
                sampled = next(lm.generate_tokens([5, 6, 7], length=12, seed=7, top_k=5))
            made[dtype] = cache, greedy, sampled
        return made[dtype]

    return converted


def fresh_process(script: str, args: list, cache: str):
    """`script` run by a new interpreter with `args` and the conversion cache `cache`; it must
    succeed."""
    r = run_cli(["-c", script, *args], env={"GPT2_TF2_TFLITE_CACHE": cache})
    assert r.returncode == 0, r.stderr
    return r


# The e2e tier's: each child imports TensorFlow for its sampled half (23-25 s a case in the
# default tier on a 2-core CPU without AVX-512: 6% of its test time); the default tier keeps the
# command's greedy run below, which imports none (1.2 s).
@pytest.mark.e2e
@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_greedy_decoding_from_a_cached_conversion_imports_no_tensorflow(
    tiny_model_dir, conversions, dtype
):
    cache, greedy, sampled = conversions(dtype)
    r = fresh_process(CHILD, [tiny_model_dir, dtype], cache)
    first, second = (json.loads(line) for line in r.stdout.splitlines())
    assert first == {"greedy": greedy, "tensorflow": False}
    assert second == {"sampled": sampled, "tensorflow": True}  # imported when first needed
    # Quietly, as `gpt2_tf2.load` imports it on the xla backend, and without TFLite's notice of
    # its XNNPACK delegate: nothing on stderr at all.
    assert r.stderr == ""


def test_the_sample_command_decodes_greedily_without_tensorflow(
    tiny_model_dir, conversions, monkeypatch
):
    from gpt2_tf2.cli.sample import main

    cache = conversions("int8")[0]
    monkeypatch.setenv("GPT2_TF2_TFLITE_CACHE", cache)  # the in-process command's too
    argv = ["--model_name", tiny_model_dir, "--dtype", "int8", "--temperature", "0"]
    argv += ["--prompt", "Hello", "--length", "12", "--nsamples", "2"]
    code, want, _ = run_main(main, argv)  # in this process, TensorFlow imported
    assert code == 0
    r = fresh_process(COMMAND, argv, cache)
    assert r.stdout == want
    assert r.stderr == "tensorflow imported: False\n"  # and nothing else: quiet as ever


def test_which_interpreter_runs_the_steps(monkeypatch):
    """TensorFlow's own when it is imported (2.21+: right on int4 and faster at batches),
    else LiteRT's if installed, else TensorFlow's, imported then."""
    import ai_edge_litert.interpreter as litert
    import tensorflow as tf

    from gpt2_tf2.generation.tflite import interpreter_class

    assert interpreter_class() is tf.lite.Interpreter
    monkeypatch.setattr(tf, "__version__", "2.20.0")  # wrong on int4: not used
    assert interpreter_class() is litert.Interpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # not installed
    assert interpreter_class() is tf.lite.Interpreter


@pytest.mark.parametrize(
    "tensorflow,litert,supported",
    [("2.18.0", "2.3.0", False), ("2.20.1", "2.3.0", True), ("2.20.1", None, False)]
    + [("2.21.0", None, True), ("2.21.0", "2.2.0", False)],
)
def test_int4_is_supported_as_the_installed_versions_say(
    monkeypatch, tensorflow, litert, supported
):
    """Written from TensorFlow 2.19 (the schema's 4-bit blocks); run right by LiteRT from 2.3,
    by TensorFlow's own interpreter from 2.21; read off the distributions, nothing imported."""
    from importlib import metadata

    from gpt2_tf2.formats import tflite

    versions = {"tensorflow": tensorflow, "ai-edge-litert": litert}

    def version(dist):
        if versions.get(dist) is None:
            raise metadata.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(metadata, "version", version)
    assert tflite.int4_supported() is supported


def test_tensorflow_version_without_a_known_distribution(monkeypatch):
    """A build under another name (none of the distributions looked for): the version is the
    imported module's."""
    from importlib import metadata

    import tensorflow as tf

    from gpt2_tf2.core import lazy

    def version(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(metadata, "version", version)
    assert lazy.installed() is None
    assert lazy.version() == tf.__version__
