"""The TensorFlow Lite backend against the XLA path on a tiny random model: logits (float32
within 1e-4, int8 within a stated tolerance), greedy and sampled tokens, mixed-length batches,
the sliding window, streaming and scoring; the conversion cache; the exported .tflite run by
tools/tflite_generate.py in a process without gpt2_tf2; bad input."""

from __future__ import annotations

import concurrent.futures
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, run_cli, run_in_process
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats import tflite

# TensorFlow before 2.21 has no 4-bit blocks or runs them wrongly: int4 is refused there
# (test_tflite_template.py), not run.
needs_int4 = pytest.mark.skipif(not tflite.int4_supported(), reason="no 4-bit blocks here")

INT8_TOLERANCE = 0.05  # max abs logit difference on the tiny model (measured: 0.005)
INT4_TOLERANCE = 0.2  # the same for int4 (measured: 0.056)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private conversion cache for this module (GPT2_TF2_TFLITE_CACHE)."""
    path = str(tmp_path_factory.mktemp("tflite_cache"))
    old = os.environ.get("GPT2_TF2_TFLITE_CACHE")
    os.environ["GPT2_TF2_TFLITE_CACHE"] = path
    yield path
    if old is None:
        del os.environ["GPT2_TF2_TFLITE_CACHE"]
    else:
        os.environ["GPT2_TF2_TFLITE_CACHE"] = old


@pytest.fixture()
def xla(tiny_lm):
    return tiny_lm  # shared: read only


@pytest.fixture(scope="module")
def lite(tiny_model_dir, cache):
    from gpt2_tf2.generation.language_model import load

    return {
        dtype: load(tiny_model_dir, dtype=dtype, backend="tflite")
        for dtype in ("float32", "int8") + (("int4",) if tflite.int4_supported() else ())
    }


def step_logits(lm, tokens, prompt_len):
    """Logits after the prompt, then after each later token fed one at a time."""
    from gpt2_tf2.generation.loop import bucket

    tokens = np.asarray(tokens, np.int32)
    offsets = np.zeros([len(tokens)], np.int32)
    logits, columns = lm.lite.step.prompt(tokens[:, :prompt_len], offsets, [prompt_len - 1])
    out = [logits[:, 0]]
    lm.lite.step.start(columns, bucket(tokens.shape[1], 64))
    for pos in range(prompt_len, tokens.shape[1]):
        out.append(lm.lite.step.next(tokens[:, pos], pos, offsets))
    return np.stack(out, axis=1)  # [batch, n - prompt_len + 1, vocab]


@pytest.mark.parametrize("dtype", ["float32", "int8", pytest.param("int4", marks=needs_int4)])
def test_logits_equal_the_xla_model(xla, lite, dtype):
    """Past column 32 too: the cache's buffers grow from 32 columns to 64 on the way
    (`cache_width`), keeping what they hold."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, [2, 60])
    full = xla.model(tf.constant(tokens, tf.int32))["logits"].numpy()[:, 9:]
    diff = np.max(np.abs(step_logits(lite[dtype], tokens, 10) - full))
    print(f"{dtype}: max |tflite - xla| = {diff:.3g}")
    tolerance = {"float32": 1e-4, "int8": INT8_TOLERANCE, "int4": INT4_TOLERANCE}[dtype]
    assert diff < tolerance, diff
    if dtype != "float32":
        assert diff > 1e-6  # the weights really are quantized


SETTINGS = [
    dict(temperature=0),
    dict(temperature=1.0, top_k=40, seed=3),
    dict(temperature=0.8, top_p=0.9, seed=5, repetition_penalty=1.3, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_float32_tokens_equal_the_xla_loop(xla, lite, settings):
    prompt = "Hello there, my friend"
    assert lite["float32"].generate(prompt, length=30, **settings) == xla.generate(
        prompt, length=30, **settings
    )


@pytest.mark.parametrize("dtype", ["int8", pytest.param("int4", marks=needs_int4)])
def test_quantized_greedy_follows_the_xla_loop(xla, lite, dtype):
    """int8 and int4 may part from float32 where two logits are close; here they do not."""
    got = lite[dtype].generate("Hello there, my friend", length=20, temperature=0)
    assert got == xla.generate("Hello there, my friend", length=20, temperature=0)


def test_plain_greedy_is_the_strategys_argmax_without_a_tensorflow_call(lite, monkeypatch):
    """Rows that are all greedy with every processor off take the argmax in NumPy: the compiled
    strategy's own tokens (ties to the first), and it is not called; a penalty calls it."""
    from gpt2_tf2.generation.settings import Settings

    lm = lite["float32"]
    logits = np.random.default_rng(1).normal(size=[3, 50257]).astype(np.float32)
    logits[1, [7, 9]] = logits[1].max() + 1  # a tie
    zeros = np.zeros([3], np.int32)
    settings = Settings.rows([Settings.make(temperature=0.0)] * 3)
    chosen = lm.lite.choose(logits, np.zeros([3, 8], np.int32), zeros, settings, zeros, zeros)
    assert chosen.tolist() == logits.argmax(-1).tolist() and chosen[1] == 7
    calls, choose = [], lm.lite.choose
    monkeypatch.setattr(lm.lite, "choose", lambda *args: calls.append(1) or choose(*args))
    plain = lm.generate("Hello there", length=6, temperature=0)
    assert calls == [] and plain
    lm.generate("Hello there", length=6, temperature=0, repetition_penalty=1.3)
    assert len(calls) == 6


@pytest.mark.e2e
def test_mixed_lengths_window_stream_and_batches(xla, lite):
    lm = lite["float32"]
    prompts = ["Hi", "A much longer prompt than the first one"]
    kw = dict(length=20, temperature=0.9, seed=7, nsamples=2)
    assert lm.generate(prompts, **kw) == xla.generate(prompts, **kw)
    assert lm.generate("Hi", length=150, temperature=0) == xla.generate(
        "Hi", length=150, temperature=0
    )  # past the context of 64: the sliding window
    kw = dict(length=40, seed=1, top_k=10)
    assert "".join(lm.stream("Hi", **kw)) == xla.generate("Hi", **kw)[0]
    kw = dict(length=12, seed=2, batch_size=3, nsamples=5)
    assert lm.generate("Once", **kw) == xla.generate("Once", **kw)


def test_weight_bytes_are_what_each_backend_holds(xla, lite):
    """`LanguageModel.weight_bytes` (the memory check's weights): float32's variables; on
    tflite the converted step's file, which int8 and int4 make smaller (the tiny model's is
    mostly its embedding, which int8's file holds twice: the lookup and the output layer)."""
    assert xla.weight_bytes() == xla.hparams.num_params() * 4
    int8 = lite["int8"].weight_bytes()
    assert int8 < 0.65 * xla.weight_bytes() <= 0.65 * lite["float32"].weight_bytes()
    if "int4" in lite:
        assert lite["int4"].weight_bytes() < int8


def test_score_equals_the_xla_path(xla, lite):
    text = "Hello world, this is a test of scoring. " * 8  # several windows of 64 tokens
    assert abs(lite["float32"].score(text) - xla.score(text)) < 1e-4
    assert abs(lite["int8"].score(text) - xla.score(text)) < INT8_TOLERANCE


def test_the_server_on_tflite_equals_xla_echo_and_logprobs_included(lite, tiny_lm):
    """`serve --backend tflite`: a greedy completion with echo and logprobs through the real
    `openai` client has XLA's tokens, and the prompt's and the completion's log-probabilities
    (the prompt scored on the interpreter, on the engine's thread) within 1e-4 of XLA's."""
    import openai

    from conftest import serving, wait_ready

    prompt = "Hello there, my friend"
    kw = dict(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    with serving(lambda: lite["float32"], slots=2) as (url, _):
        wait_ready(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        choice = client.completions.create(**kw).choices[0]
        streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
        # A beam search while a sampled stream runs: both on the one interpreter, the search's
        # pieces on the engine's thread between its steps; each as on xla.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            beams = dict(use_beam_search=True, best_of=3)
            searched = pool.submit(
                client.completions.create, model="tiny", prompt=prompt, max_tokens=20, n=2,
                extra_body=beams,
            )  # fmt: skip
            sampled = pool.submit(
                client.completions.create, model="tiny", prompt=prompt, max_tokens=40, seed=5
            )
            searched, sampled = searched.result(), sampled.result()
    want_beams = tiny_lm.beam_search(
        tiny_lm.encode(prompt), num_beams=3, num_return_sequences=2, length=20
    )
    assert [c.text for c in searched.choices] == [tiny_lm.encoder.decode(t) for t in want_beams]
    assert sampled.choices[0].text == tiny_lm.generate(prompt, length=40, seed=5)[0]
    want = tiny_lm.generate(prompt, length=6, temperature=0)[0]
    assert choice.text == streamed == prompt + want
    tokens = tiny_lm.encode(choice.text)
    nll = tiny_lm._token_nll_eager(tf.constant([tokens])).numpy()[0]
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(tokens)
    np.testing.assert_allclose(lp.token_logprobs[1:], -nll, atol=1e-4)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_beams=4, num_return_sequences=4, length=24),
        dict(
            num_beams=3,
            num_return_sequences=2,
            length=20,
            length_penalty=-0.5,
            early_stopping=True,
            no_repeat_ngram_size=2,
        ),
    ],
)
def test_beam_search_finds_the_xla_loops_beams(xla, lite, settings):
    """The same search (`beams.BeamSearch`) on the interpreter: the cache's rows reordered in
    NumPy between the compiled choices, the beams as the compiled loop finds them (which match
    transformers', test_reference.py); whole and in pieces. The stop token is one the beams
    meet (greedy's fifth), so hypotheses end early too."""
    prompt = xla.encode("Hello there, my friend")
    stop = next(xla.generate_tokens(prompt, length=5, temperature=0))[0][4]
    want = xla.beam_search(prompt, stop_token=stop, **settings)
    assert lite["float32"].beam_search(prompt, stop_token=stop, **settings) == want
    seen = []
    pieces = lite["float32"].beam_search(
        prompt, stop_token=stop, progress=lambda done, total: seen.append(done), **settings
    )
    assert pieces == want and seen[0] == min(16, seen[-1]), seen
    assert len(want) == settings["num_return_sequences"]


def test_the_sample_command_searches_beams_on_tflite(xla, tiny_model_dir, cache):
    args = ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--backend", "tflite"]
    args += ["--num_beams", "3", "--num_return_sequences", "2", "--length", "12"]
    r = run_in_process(args + ["--prompt", "Hello there"])
    assert r.returncode == 0, r.stderr
    want = xla.generate("Hello there", length=12, num_beams=3, num_return_sequences=2)
    assert all(text in r.stdout for text in want) and r.stdout.count("SAMPLE") == 2, r.stdout


def test_a_beam_search_and_an_engine_share_the_interpreter(xla, lite):
    """The interpreter holds one cache at a time: a beam search and an engine's rows running
    in turn keep theirs aside (`evict`) and back; each gives what it gives alone."""
    from gpt2_tf2.generation.beams import BeamSearch
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine, run_alone

    lm = lite["float32"]
    prompt = lm.encode("Sharing the interpreter")
    beams_config = GenerationConfig(num_beams=3, num_return_sequences=3, length=12)
    rows_config = GenerationConfig(length=12, top_k=20, seed=7)
    alone_beams = lm.beam_search(prompt, beams_config)
    alone_rows = run_alone(lm, prompt, rows_config, slots=2)
    search, engine = BeamSearch(lm), Engine(lm, slots=2)
    beam_slot, row_slot = search.add(prompt, beams_config), engine.add(prompt, rows_config)
    tokens = []
    while search.finished() != [beam_slot] or row_slot not in engine.finished():
        search.step(2)
        tokens += engine.step(3)[row_slot]
    assert search.results(beam_slot) == alone_beams and tokens == alone_rows
    search.remove(beam_slot)
    with pytest.raises(UserError, match="not busy"):
        search.results(beam_slot)


def test_the_cache_is_as_wide_as_the_rows_need():
    """Multiples of 32 up to 128, then of a quarter of the power of two below: never past the
    capacity, never narrower than the columns."""
    from gpt2_tf2.generation.tflite import cache_width

    assert [cache_width(c, 1024) for c in (1, 32, 33, 100, 129, 300, 600, 1000)] == [
        32, 32, 64, 128, 160, 320, 640, 1024,
    ]  # fmt: skip
    assert cache_width(40, 36) == 36 and cache_width(1, 1) == 1
    for columns in range(1, 1025):
        width = cache_width(columns, 1024)
        assert 0 <= width - columns < max(32, columns / 4), columns


def test_engine_rows_equal_xla_as_the_cache_widens_and_narrows(xla, lite, monkeypatch):
    """A long row takes the cache's buffers past 32 columns; a shorter row that joins it runs
    on narrower ones once the long one ends (a finished row no longer counts). Each step's
    logits are the XLA model's on the row's tokens (float32, within 1e-4), its tokens XLA's."""
    from gpt2_tf2.generation.config import GenerationConfig
    from gpt2_tf2.generation.engine import Engine

    lm, step = lite["float32"], lite["float32"].lite.step
    steps, next_ = [], step.next

    def recorded(tokens, pos, offsets):
        steps.append((np.copy(pos), next_(tokens, pos, offsets)))
        return steps[-1][1]

    monkeypatch.setattr(step, "next", recorded)
    prompts = [lm.encode("Hello there"), lm.encode("A short one")]
    engine = Engine(lm, 2)
    slots = [engine.add(prompts[0], GenerationConfig(length=45, temperature=0))]
    out, widths = {slots[0]: []}, []
    while engine.busy():
        if len(widths) == 7:  # the long row is at column 30
            slots.append(engine.add(prompts[1], GenerationConfig(length=30, temperature=0)))
            out[slots[1]] = []
        for slot, tokens in engine.step(4).items():
            out[slot] += tokens
        widths.append(step._shape[2])
        for slot in engine.finished():
            engine.remove(slot)
    assert 64 in widths and widths[-1] == 32, widths
    for slot, prompt, length in zip(slots, prompts, (45, 30)):
        tokens = prompt + out[slot]
        assert len(out[slot]) == length
        full = xla.model(tf.constant([tokens], tf.int32))["logits"].numpy()[0]
        mine = [(int(pos[slot]), logits[slot]) for pos, logits in steps if pos[slot] >= len(prompt)]
        assert len(mine) == len(out[slot]) - 1
        diff = max(np.max(np.abs(logits - full[pos])) for pos, logits in mine)
        assert diff < 1e-4, diff
        greedy = np.argmax(full[len(prompt) - 1 : len(tokens) - 1], axis=-1)
        assert out[slot] == greedy.tolist()  # XLA's greedy tokens on the same text


def test_the_conversion_is_cached_and_redone_when_the_weights_change(
    model_copy, cache, tmp_path, monkeypatch
):
    import tempfile

    from gpt2_tf2.generation.language_model import load

    scratch = tmp_path / "scratch"  # where the conversion's temporary SavedModel goes
    scratch.mkdir()
    (scratch / "theirs").write_text("not ours")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    said = []
    load(str(model_copy), dtype="int8", progress=said.append)
    files = sorted(os.listdir(cache))
    load(str(model_copy), dtype="int8", progress=said.append)
    assert len(said) == 1 and "converting" in said[0]
    assert sorted(os.listdir(cache)) == files  # the same file, no second conversion
    data = model_copy / "model.ckpt.data-00000-of-00001"
    os.utime(data, ns=(1, 1))  # as if the weights were written again
    load(str(model_copy), dtype="int8", progress=said.append)
    assert len(said) == 2
    # The new weights' file took the place of the earlier one: no pile of a run's checkpoints.
    (added,) = set(os.listdir(cache)) - set(files)
    (removed,) = set(files) - set(os.listdir(cache))
    assert added.rsplit("-", 1)[0] == removed.rsplit("-", 1)[0]  # the same directory and dtype
    assert not [f for f in os.listdir(cache) if ".tmp-" in f]
    # Its own temporary directories removed, only those. TensorFlow's autograph writes its
    # generated code there too, the first time it runs in a process, and removes it at exit
    # (autograph/pyct/loader.py): not ours, and present only when this test runs first.
    left = [f for f in os.listdir(scratch) if not f.startswith("__autograph_generated_file")]
    assert left == ["theirs"]


def test_a_conversion_of_new_weights_removes_only_the_entries_it_supersedes(tmp_path):
    where, other = "0123456789abcdef", "fedcba9876543210"
    names = {
        "old": f"run1-int8-{where}-{other}.tflite",  # the same directory, earlier weights
        "old part": f"run1-int8-{where}-{other}-h0-5.tflite",
        "other dtype": f"run1-int4-{where}-{other}.tflite",
        "other directory": f"run1-int8-{other}-{other}.tflite",  # or TensorFlow, or code
        "another model": f"run2-int8-{where}-{other}.tflite",
        "earlier naming": f"run1-int8-{other}.tflite",
        "not ours": "run1-int8-notes.txt",
        "its other part": f"run1-int8-{where}-{where}-h6-11.tflite",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    # A directory named as a superseded entry: os.remove never takes a directory.
    names["a directory"] = f"run1-int8-{where}-{other}-h6-11.tflite"
    (tmp_path / names["a directory"]).mkdir()
    new = f"run1-int8-{where}-{where}-h0-5.tflite"
    (tmp_path / new).write_text("x")
    tflite.prune_superseded(str(tmp_path), new)
    kept = {label for label, name in names.items() if (tmp_path / name).exists()}
    assert kept == set(names) - {"old", "old part"}
    assert (tmp_path / new).exists()
    tflite.prune_superseded(str(tmp_path / "gone"), new)  # no listing: nothing pruned, no error


@pytest.mark.e2e
def test_exported_tflite_runs_without_gpt2_tf2(xla, tiny_model_dir, cache, tmp_path):
    out = tmp_path / "exported"
    r = run_cli(
        ["-m", "gpt2_tf2.export", "--format", "tflite", "--model_name", tiny_model_dir,
         "--out", str(out)],
        env={"GPT2_TF2_TFLITE_CACHE": cache},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["encoder.json", "hparams.json", "model.tflite", "vocab.bpe"]
    # A copy of the example where gpt2_tf2 cannot be imported: it uses NumPy and TFLite only.
    shutil.copy(os.path.join(REPO, "tools", "tflite_generate.py"), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    prompt = xla.encoder.encode("The meaning of life is")
    argv = ["x", str(out), "--ids", ",".join(map(str, prompt)), "--length", "15", "--top_k", "0"]
    script = (
        f"import sys; sys.modules['gpt2_tf2'] = None; sys.argv = {argv!r}; "
        "exec(open('tflite_generate.py').read())"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert r.returncode == 0, r.stderr
    greedy = next(xla.generate_tokens(prompt, length=15, temperature=0))[0]
    assert r.stdout.strip() == ",".join(map(str, greedy))


@needs_int4
def test_int4_exports_the_step_it_samples_with(lite, tiny_model_dir, cache, tmp_path):
    """`export --format tflite --dtype int4` (in-process) writes the cached int4 step: 4-bit
    matrices, the same logits as sampling's."""
    from tensorflow.lite.python import schema_py_generated as schema

    out = tmp_path / "int4"
    args = ["-m", "gpt2_tf2.export", "--format", "tflite", "--dtype", "int4"]
    r = run_in_process(args + ["--model_name", tiny_model_dir, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    data = (out / "model.tflite").read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    types = [t.type for t in model.subgraphs[0].tensors]
    assert types.count(schema.TensorType.INT4) == 4 * 2 + 1  # 4 per block, the output layer
    assert data == open(lite["int4"].lite.step.path, "rb").read()


def test_bad_input_is_one_line(tiny_model_dir, cache, tmp_path):
    """The commands' checks, in-process (the `cache` fixture names the conversion cache)."""
    sample = ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--length", "3"]
    cases = [
        (sample + ["--backend", "tflite", "--dtype", "float16"], "float32, int8 or int4"),
        (sample + ["--backend", "xla", "--dtype", "int8"], "tflite backend"),
        (sample + ["--backend", "xla", "--dtype", "int4"], "int4 weights run on the tflite"),
        (sample + ["--backend", "onnx"], "xla or tflite"),
        (["-m", "gpt2_tf2.train", "--dataset", "x.npz", "--mixed_precision", "int8"], "inference"),
        (["-m", "gpt2_tf2.train", "--dataset", "x.npz", "--mixed_precision", "int4"], "inference"),
    ]
    for args, message in cases:
        r = run_in_process(args, cwd=str(tmp_path))
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_damaged_tflite_file_is_one_line(tmp_path):
    from gpt2_tf2.core.hparams import HParams
    from gpt2_tf2.generation.tflite import LiteStep

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"TFL3" + b"\0" * 100)
    with pytest.raises(UserError, match="not a TensorFlow Lite model"):
        LiteStep(str(bad), HParams())


@pytest.mark.e2e
def test_the_command_line_is_quiet_but_for_the_conversion(tiny_model_dir, tmp_path):
    env = {"GPT2_TF2_TFLITE_CACHE": str(tmp_path / "cache")}
    args = ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--dtype", "int8"]
    args += ["--length", "5", "--seed", "1", "--temperature", "0"]
    first = run_cli(args, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.strip().splitlines() == [
        f"converting {tiny_model_dir} to TensorFlow Lite (int8), once"
    ]
    again = run_cli(args, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert again.stdout == first.stdout and "SAMPLE 1" in first.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_released_file_pages_leave_memory_and_read_back(tmp_path):
    import mmap

    from gpt2_tf2.generation.tflite import release_file_pages

    def resident_kb(path):  # this process's resident memory from mappings of `path`
        total, inside = 0, False
        with open("/proc/self/smaps", encoding="utf-8") as f:
            for line in f:
                if "-" in line.split(" ", 1)[0] and not line.startswith(("Rss", "Size")):
                    inside = line.rstrip("\n").endswith(str(path))
                elif inside and line.startswith("Rss:"):
                    total += int(line.split()[1])
        return total

    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapped, np.uint8)
    assert view.sum() == data.sum()  # every page read: resident
    before = resident_kb(path)
    assert release_file_pages(str(path)) == 8 << 20
    after = resident_kb(path)
    print(f"resident {before} kB -> {after} kB")
    assert before >= 8 << 10 and after < before / 4
    assert np.array_equal(view, data)  # read back from the page cache, unchanged
    del view
    mapped.close()


def test_each_part_of_a_large_float32_model_fits_a_file():
    """1558M in float32 (6.2 GB) is past a .tflite file's 2 GB: export refuses it, and sampling
    converts it in parts, each under the limit, the first and the last with a copy of wte each."""
    from gpt2_tf2.core.hparams import PRESETS
    from gpt2_tf2.core.tflite_step import part_layers
    from gpt2_tf2.formats import tflite as tflite_format

    hp = PRESETS["1558M"]
    whole = tflite_format.weight_bytes(hp, "float32")
    assert whole == 4 * hp.num_params() and tflite_format.weight_bytes(hp, "int8") * 4 == whole
    with pytest.raises(UserError, match="2 GB per file"):
        tflite_format.check_size(hp, "float32")
    parts = part_layers(hp, math.ceil(whole / tflite_format.PART_BYTES))
    sizes = [tflite_format.weight_bytes(hp, "float32", layers) for layers in parts]
    assert parts == [(i, i + 4) for i in range(0, 48, 4)]  # 6.23 GB / 512 MiB: 12 parts
    assert max(sizes) < tflite_format.FLATBUFFER_LIMIT
    for layers in parts:
        tflite_format.check_size(hp, "float32", layers)
    assert sum(sizes) == whole + 4 * hp.n_vocab * hp.n_embd


def load_in_parts(model_dir, cache, dtype):
    """The model on the tflite backend in as many parts as blocks (PART_BYTES = 1), converted
    into the new directory `cache`."""
    from gpt2_tf2.formats import tflite as tflite_format
    from gpt2_tf2.generation.language_model import load

    old, previous = tflite_format.PART_BYTES, os.environ.get("GPT2_TF2_TFLITE_CACHE")
    os.environ["GPT2_TF2_TFLITE_CACHE"] = str(cache)
    tflite_format.PART_BYTES = 1  # as many parts as blocks: two for the tiny model
    try:
        return load(model_dir, dtype=dtype, backend="tflite")
    finally:
        tflite_format.PART_BYTES = old
        if previous is None:
            del os.environ["GPT2_TF2_TFLITE_CACHE"]
        else:
            os.environ["GPT2_TF2_TFLITE_CACHE"] = previous


@pytest.mark.large
@needs_int4
def test_int4_in_parts_is_the_whole_int4_step(lite, tiny_model_dir, tmp_path):
    """The first part holds only blocks in 4 bits, the last the output layer too: together the
    whole file's logits."""
    parts = load_in_parts(tiny_model_dir, tmp_path, "int4")
    assert len(parts.lite.step.parts) == 2
    tokens = np.random.default_rng(3).integers(0, 50000, (2, 12))
    diff = np.abs(step_logits(parts, tokens, 5) - step_logits(lite["int4"], tokens, 5)).max()
    assert diff < 1e-4, diff


@pytest.mark.large
def test_a_large_model_loads_in_parts_with_the_same_results(xla, tiny_model_dir, tmp_path):
    """A model past formats.tflite.PART_BYTES runs as several interpreters (one per part of its
    blocks, each packed and released before the next): the same logits and tokens."""
    parts = load_in_parts(tiny_model_dir, tmp_path, "float32")
    assert len(parts.lite.step.parts) == xla.hparams.n_layer == 2
    assert len(os.listdir(tmp_path)) == 3  # two parts and the lock
    tokens = np.random.default_rng(3).integers(0, 50000, (2, 12))
    full = xla.model(tf.constant(tokens, tf.int32))["logits"].numpy()[:, 4:]
    diff = np.max(np.abs(step_logits(parts, tokens, 5) - full))
    assert diff < 1e-4, diff
    kwargs = dict(length=12, nsamples=2, batch_size=2, top_k=1, seed=0)
    assert parts.generate("Hello there", **kwargs) == xla.generate("Hello there", **kwargs)
