"""Nothing lost, round three: a run name cannot climb out of the checkpoint directory, data
outside the vocabulary and non-finite weights never reach a checkpoint, clean-up removes only
exact names a save leaves, and encode and export refuse to replace what is not theirs.

The commands run in this process through their entry points (`conftest.run_main`): their logic
is the subject, not the process. Each test reads the user's files' md5 sums before and after."""

import os

import numpy as np
import pytest

from conftest import run_main, tree_digest
from gpt2_tf2.cli import encode as encode_cli
from gpt2_tf2.cli import export as export_cli
from gpt2_tf2.cli import init as init_cli
from gpt2_tf2.cli import sample as sample_cli
from gpt2_tf2.cli import train as train_cli
from gpt2_tf2.errors import UserError

TEXT = "one two three four five six seven eight nine ten. " * 40


def train_argv(root, model, run, *extra, steps=4):
    return [
        "--dataset", root / "data.npz", "--model_name", model, "--run_name", run,
        "--checkpoint_dir", root / "checkpoint", "--sample_dir", root / "samples",
        "--steps", steps, "--batch_size", 2, "--sequence_length", 16, "--learning_rate", 3e-3,
        "--seed", 3, "--sample_every", 0, "--save_every", 2, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """checkpoint/good: a run of 4 steps; beside it, in checkpoint/, files of the user's own
    (run.json, log.tsv, logs/) that a run directory also holds."""
    root = tmp_path_factory.mktemp("guards")
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    code, _, err = run_main(
        encode_cli.main, [root / "data.txt", root / "data.npz", "--model_name", tiny_model_dir]
    )
    assert code == 0, err
    code, _, err = run_main(train_cli.main, train_argv(root, tiny_model_dir, "good"))
    assert code == 0, err
    mine = root / "checkpoint"
    (mine / "run.json").write_text('{"my": "notes"}')
    (mine / "log.tsv").write_text("1\t2\n")
    (mine / "logs").mkdir()
    (mine / "logs" / "mine.txt").write_text("mine")
    return root


@pytest.mark.parametrize("name", ["../", "./", "x/..", "r1/../", "..", "/tmp/r", "a/b", "a\\b"])
def test_a_run_name_is_one_directory_name(trained, tiny_model_dir, name):
    """`--run_name ../ --restore_from fresh --overwrite` wiped the checkpoint directory."""
    before = tree_digest(trained)
    argv = train_argv(trained, tiny_model_dir, name, "--restore_from", "fresh", "--overwrite")
    code, out, err = run_main(train_cli.main, argv)
    assert code == 2 and err.count("\n") == 1, err
    assert "--run_name must be one directory name under --checkpoint_dir" in err
    for main, argv in [
        (sample_cli.main, ["--run_name", name, "--checkpoint_dir", trained / "checkpoint"]),
        (
            export_cli.main,
            ["--run_name", name, "--checkpoint_dir", trained / "checkpoint", "--out", "x"],
        ),
    ]:
        code, out, err = run_main(main, argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "--run_name must be one directory name under --checkpoint_dir" in err
    assert tree_digest(trained) == before


def test_a_run_name_check_in_the_library():
    from gpt2_tf2.formats.run import run_dir

    assert run_dir("r1", "ckpt") == os.path.join("ckpt", "r1")
    for bad in ["", " ", ".", "..", "../", "x/..", "/abs", "a/b", 5, None]:
        with pytest.raises(
            UserError, match="`run_name` must be one directory name under `checkpoint_dir`"
        ):
            run_dir(bad, "ckpt")


def test_data_outside_the_vocabulary_is_refused_before_anything_is_touched(trained, tiny_model_dir):
    before = tree_digest(trained)
    for bad_id in (-1, 50257, 99999):
        path = trained / f"bad{bad_id}.npz"
        np.savez_compressed(path, np.array([5] * 40 + [bad_id] + [6] * 40, np.int64))
        argv = train_argv(trained, tiny_model_dir, "good", "--steps", 10)
        argv[1] = path
        code, _, err = run_main(train_cli.main, argv)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{path}: token id {bad_id} is outside the model's vocabulary of 50257" in err
        os.remove(path)
    assert tree_digest(trained) == before


def test_non_finite_weights_never_reach_a_checkpoint(trained, tiny_model_dir, tmp_path):
    """Resumed with a learning rate that blows the weights up, saving every step: the run stops
    with one line and the run's checkpoints are the good ones they were."""
    import shutil

    shutil.copytree(trained / "checkpoint" / "good", tmp_path / "checkpoint" / "good")
    shutil.copy(trained / "data.npz", tmp_path / "data.npz")
    before = tree_digest(tmp_path / "checkpoint" / "good")
    argv = train_argv(tmp_path, tiny_model_dir, "good", "--steps", 12, "--save_every", 1)
    argv[argv.index("--learning_rate") + 1] = "1e38"
    code, out, err = run_main(train_cli.main, argv)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "the loss is nan" in line or "is NaN or infinite" in line, err
    after = tree_digest(tmp_path / "checkpoint" / "good")
    good = {k: v for k, v in before.items() if k.startswith("ckpt-")}
    assert {k: after.get(k) for k in good} == good  # the good checkpoints, unchanged
    import tensorflow as tf

    for prefix in {k.split(".")[0] for k in after if k.startswith("ckpt-")}:
        reader = tf.train.load_checkpoint(str(tmp_path / "checkpoint" / "good" / prefix))
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if name.startswith("model/") and np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.isfinite(value).all(), (prefix, name)


def test_a_skipped_fp16_step_is_not_a_stop():
    from gpt2_tf2.training.loop import check_finite

    check_finite(float("nan"), {"applied": False}, 3)  # the loss scale dropped the update
    check_finite(1.5, {"applied": True}, 3)
    with pytest.raises(UserError, match="step 3: the loss is inf"):
        check_finite(float("inf"), {"applied": True}, 3)


def test_a_refused_start_removes_nothing(trained, tiny_model_dir):
    """The start-up clean-up matched `ckpt-\\d+_temp.*` and ran before the refusal."""
    run = trained / "checkpoint" / "good"
    (run / "ckpt-1_temp-notes.txt").write_text("my notes")
    (run / "ckpt-2_temp").write_text("a file of mine, not TensorFlow's shard directory")
    try:
        before = tree_digest(trained)
        code, _, err = run_main(
            train_cli.main,
            train_argv(trained, tiny_model_dir, "good", "--restore_from", "fresh"),
        )
        assert code == 2 and "already holds this run's checkpoints" in err, err
        assert tree_digest(trained) == before
    finally:
        os.remove(run / "ckpt-1_temp-notes.txt")
        os.remove(run / "ckpt-2_temp")


def test_encode_refuses_to_replace_a_dataset(trained, tiny_model_dir, tmp_path):
    (tmp_path / "t.txt").write_text("ten tokens or so of new text", encoding="utf-8")
    out = tmp_path / "mydata.npz"
    out.write_bytes((trained / "data.npz").read_bytes())
    before = tree_digest(tmp_path)
    argv = [tmp_path / "t.txt", out, "--model_name", tiny_model_dir]
    code, _, err = run_main(encode_cli.main, argv)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err, err
    assert tree_digest(tmp_path) == before
    code, out_text, err = run_main(encode_cli.main, [*argv, "--overwrite"])
    assert code == 0, err
    with np.load(out) as npz:
        assert sum(npz[k].size for k in npz.files) < 20


def test_export_does_not_replace_a_model_init_wrote(trained, vocab_files, tmp_path):
    model = tmp_path / "mine"
    code, _, err = run_main(
        init_cli.main,
        ["--out", model, "--vocab", os.path.dirname(vocab_files["encoder.json"]),
         "--n_layer", 1, "--n_embd", 16, "--n_head", 2, "--n_ctx", 32],
    )  # fmt: skip
    assert code == 0, err
    before = tree_digest(model)
    argv = ["--run_name", "good", "--checkpoint_dir", trained / "checkpoint", "--out", model]
    code, _, err = run_main(export_cli.main, argv)
    assert code == 2 and err.count("\n") == 1, err
    assert "written by gpt2_tf2 init, not by an earlier export" in err
    assert tree_digest(model) == before
    exported = tmp_path / "exported"
    for _ in range(2):  # an earlier export is still replaced
        argv[-1] = exported
        code, _, err = run_main(export_cli.main, argv)
        assert code == 0, err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", "abc"], "--seed must be an integer from 0 to 2**63 - 1, got 'abc'"),
        (["--seed", "99999999999999999999999"], "--seed must be an integer from 0 to 2**63 - 1"),
        (["--seed", "-1"], "--seed must be an integer from 0 to 2**63 - 1, got -1"),
        (["--seed", "1.5"], "--seed must be an integer from 0 to 2**63 - 1, got 1.5"),
        (["--no_repeat_ngram_size", "10000000000"], "no_repeat_ngram_size must be an integer"),
        (["--top_k", "1099511627776"], "top_k must be an integer from 0 (off) to 2147483647"),
        (["--batch_size", "100000000", "--length", "4"], "batch_size 100000000 needs about"),
    ],
)
def test_sample_flags_are_one_line(tiny_model_dir, args, fragment):
    code, _, err = run_main(sample_cli.main, ["--model_name", tiny_model_dir, *args])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err, err


@pytest.fixture()
def lm(tiny_lm):
    return tiny_lm  # shared: read only


def test_the_memory_check_counts_the_cache_a_call_allocates(lm, monkeypatch):
    """The batch's estimate holds the key/value cache sampling allocates (the prompt's bucket
    and the length's, `checks.cache_columns`), not the whole context's: with memory between the
    two, a short sample of a big batch is let through and one as long as the context refused.
    (At 1558M, batch 32 of 32 tokens was refused for 20 GB of cache it would not allocate.)"""
    from gpt2_tf2.generation import checks
    from gpt2_tf2.generation.config import GenerationConfig

    hp, batch = lm.hparams, 1000
    per_column = batch * 2 * hp.n_layer * hp.n_embd * 4
    rest = lm.weight_bytes() + batch * 4 * hp.n_vocab * 4  # the weights and the logits
    assert checks.cache_columns(hp.n_ctx, 1, 3) == 32 < hp.n_ctx == 64
    between = rest + per_column * (32 + hp.n_ctx) // 2
    monkeypatch.setattr(checks, "_physical_memory", lambda: between)
    prompt = [lm.encoder.encode("Hi")]
    lm._check(prompt, GenerationConfig(length=3, batch_size=batch, nsamples=batch))
    with pytest.raises(UserError, match="batch_size 1000 needs about"):
        lm._check(prompt, GenerationConfig(length=60, batch_size=batch, nsamples=batch))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda lm: lm.generate("Hi", length=2, top_k=2**40), "`top_k` must be an integer from 0"),
        (
            lambda lm: lm.generate("Hi", length=2, no_repeat_ngram_size=2**31),
            "`no_repeat_ngram_size` must be an integer from 0",
        ),
        (lambda lm: lm.generate("Hi", length=2, seed=2**70), "`seed` must be an integer from 0"),
        (lambda lm: lm.generate("Hi", length=2, seed=-3), "`seed` must be an integer from 0"),
        (lambda lm: list(lm.stream("Hi", length=2, seed="x")), "`seed` must be an integer from 0"),
        (lambda lm: lm.score_tokens([1, 2, 99999]), "token id 99999 is not a token of the"),
        (
            lambda lm: lm.generate_tokens([1, 2, -1], length=2).__next__(),
            "token id -1 is not a token",
        ),
        (
            lambda lm: lm.generate("Hi", length=2, num_return_sequences=5),
            "`num_return_sequences` counts the beams returned: it needs `num_beams` > 1",
        ),
        (lambda lm: lm.generate("Hi", length=2, batch_size=10**8), "batch_size 100000000 needs"),
    ],
)
def test_the_library_says_what_is_wrong(lm, call, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(lm)


@pytest.mark.parametrize(
    "weight_map, message",
    [
        (["model.safetensors"], "expected a weight_map object"),
        ({"wte": 3}, "weight_map names 3; shards are file names"),
        ({"wte": "../x.safetensors"}, "weight_map names '../x.safetensors'; shards are file"),
        ({"wte": "/etc/passwd"}, "weight_map names '/etc/passwd'"),
        ({}, "expected a weight_map object"),
    ],
)
def test_a_shard_index_is_checked_and_confined(tmp_path, weight_map, message):
    import json

    from gpt2_tf2.formats import huggingface

    (tmp_path / "hf").mkdir()
    (tmp_path / "x.safetensors").write_bytes(b"outside the directory")
    index = tmp_path / "hf" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        huggingface.read_weights(str(tmp_path / "hf"))


def test_tensorflow_s_wrapping_is_not_shown():
    import tensorflow as tf

    from gpt2_tf2.errors import first_line

    e = tf.errors.ResourceExhaustedError(
        None,
        None,
        "{{function_node __wrapped__SaveV2_dtypes_148_device_/job:localhost/replica:0/task:0/"
        "device:CPU:0}} /x/variables_temp/part-0.data; No space left on device [Op:SaveV2]",
    )
    assert first_line(e) == "/x/variables_temp/part-0.data; No space left on device"


FULL = "{{function_node __wrapped__SaveV2}} /t/part-0; No space left on device [Op:SaveV2]"


def test_a_full_disk_export_says_what_it_needs(trained, tiny_model_dir, tmp_path, monkeypatch):
    import tensorflow as tf

    from gpt2_tf2.formats import openai
    from gpt2_tf2.generation import savedmodel

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, FULL)

    monkeypatch.setattr(savedmodel, "write_savedmodel", full)
    monkeypatch.setattr(openai, "_write_files", full)
    for argv in [
        ["--format", "savedmodel", "--model_name", tiny_model_dir, "--out", tmp_path / "sm"],
        ["--run_name", "good", "--checkpoint_dir", trained / "checkpoint", "--out", tmp_path / "m"],
    ]:
        code, _, err = run_main(export_cli.main, argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "No space left on device" in err and "function_node" not in err, err
        assert "[Op:" not in err and " MB needed" in err, err
    assert os.listdir(tmp_path) == []


def test_to_hf_on_a_file_says_it_is_a_file(tiny_model_dir, tmp_path):
    from gpt2_tf2.cli import convert as convert_cli

    (tmp_path / "f").write_text("mine")
    code, _, err = run_main(convert_cli.main, ["to-hf", tiny_model_dir, "--out", tmp_path / "f"])
    assert code == 2 and "f: exists and is a file, not a directory" in err, err
    assert (tmp_path / "f").read_text() == "mine"


def test_convert_from_a_repository_id_offline_is_one_quick_line(tmp_path, monkeypatch):
    """Offline, huggingface_hub printed five retry lines and took 34 s to say so."""
    import socket
    import time

    from gpt2_tf2.cli import convert as convert_cli

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    began = time.monotonic()
    code, _, err = run_main(convert_cli.main, ["from-hf", "someone/model", "--out", tmp_path / "o"])
    assert code == 2 and err.count("\n") == 1, err
    assert f"someone/model: cannot download: 127.0.0.1:{port} cannot be reached" in err
    assert time.monotonic() - began < 10 and not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_the_library_is_quiet_by_default_and_keeps_compiled_loops(tiny_model_dir, tmp_path):
    """Fresh interpreters (import-time behaviour and the process's first XLA compilation are
    the subject): `gpt2_tf2.load` printed TensorFlow's start-up lines (oneDNN, cuInit) that the
    command line hides; GPT2_TF2_VERBOSE=1 shows them. A program `load(...).generate` compiled
    is written to GPT2_TF2_XLA_CACHE, as the command line does, and a second process reads it
    back (same text, nothing new written). Before TensorFlow 2.21 the cache is off: nothing is
    written. Keras, which TensorFlow imports eagerly and gpt2_tf2 does not use, is not imported
    (`runner.import_tensorflow_without_keras`), and `tf.keras` still works when asked for. A
    process that imported TensorFlow itself first keeps its programs in the cache too."""
    import tensorflow as tf

    from conftest import run_cli

    cache = tmp_path / "xla"
    env = {"GPT2_TF2_XLA_CACHE": str(cache)}
    code = (
        f"import sys, gpt2_tf2; lm = gpt2_tf2.load({tiny_model_dir!r}); "
        "texts = lm.generate('Hi', length=5, seed=3); print(len(texts)); print(texts[0]); "
        "print('keras' in sys.modules)"
    )
    quiet = run_cli(["-c", code], env=env)
    assert quiet.returncode == 0 and quiet.stdout.startswith("1\n"), quiet.stderr
    assert quiet.stdout.endswith("\nFalse\n"), quiet.stdout
    assert quiet.stderr == "", quiet.stderr
    stored = sorted(os.listdir(cache)) if cache.exists() else []
    uses_keras = "; import tensorflow as tf; print(tf.keras.layers.Dense(2).units)"
    again = run_cli(["-c", code + uses_keras], env=env)
    assert again.returncode == 0 and again.stdout == quiet.stdout + "2\n", again.stderr
    assert again.stderr == "", again.stderr  # reading the cache back logs a line, hidden
    if tuple(int(p) for p in tf.__version__.split(".")[:2]) < (2, 21):
        assert not cache.exists()
    else:
        assert stored, "nothing was cached"
        assert sorted(os.listdir(cache)) == stored  # read back, not compiled and written again
    # The user's own `import tensorflow` first, as most notebooks start: the cache is used all
    # the same (it was not: the flag was set only by an import the package made itself).
    first = tmp_path / "xla-tensorflow-first"
    mine = run_cli(["-c", "import tensorflow; " + code], env={"GPT2_TF2_XLA_CACHE": str(first)})
    texts = quiet.stdout.removesuffix("False\n")  # TensorFlow imported whole: with its Keras
    assert mine.returncode == 0 and mine.stdout == texts + "True\n", mine.stderr
    if stored:
        assert (sorted(os.listdir(first)) if first.exists() else []) == stored  # written too
    loading = f"import gpt2_tf2; gpt2_tf2.load({tiny_model_dir!r})"  # the lines come by then
    loud = run_cli(["-c", loading], env={"GPT2_TF2_VERBOSE": "1"})
    assert loud.returncode == 0 and "I0000" in loud.stderr, loud.stderr


def test_beam_search_shows_progress_on_a_terminal(tiny_model_dir):
    """It cannot stream: the README's --num_beams line printed nothing for over 300 s."""
    import contextlib
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out, err = io.StringIO(), Terminal()
    argv = ["--model_name", tiny_model_dir, "--prompt", "Beams", "--num_beams", "3"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            sample_cli.main([*argv, "--length", "40"])
    assert e.value.code == 0 and "SAMPLE 1" in out.getvalue()
    assert "beam search" in err.getvalue() and "/40" in err.getvalue(), err.getvalue()
    code, _, err = run_main(sample_cli.main, [*argv, "--length", "20"])  # not a terminal
    assert code == 0 and err == "", err
