"""Bad input found by trying the commands as a new user would: each is one line saying what is
wrong, exit status 2, no traceback (and no TensorFlow log line)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, run_in_process, write_random_model
from gpt2_tf2.errors import UserError


def assert_clean_error(result, *fragments):
    """One error line; before it at most a progress bar's refreshes (a terminal overwrites
    them; a pipe shows them as lines ending in carriage returns)."""
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), result.stderr
    assert all(line.startswith("encoding:") for line in lines[:-1]), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bad")
    (root / "x.txt").write_text("Some text to encode. " * 20, encoding="utf-8")
    (root / "dir.npz").mkdir()
    (root / "empty").mkdir()
    (root / "fake.npz").write_text("this is text, not a zip archive", encoding="utf-8")
    (root / "somefile").write_text("a file, not a directory")
    return root


def encode(files, tiny_model_dir, *args):
    return run_in_process(
        ["-m", "gpt2_tf2.encode", *args, "--model_name", tiny_model_dir], cwd=files
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["x.txt", "dir.npz"], "dir.npz: is a directory"),
        (["x.txt", "x.txt/o.npz"], "x.txt/o.npz: cannot write"),
        (["x.txt", "/proc/nope/o.npz"], "/proc/nope/o.npz: cannot write"),
        (["empty", "o.npz"], "empty: the directory contains no text files"),
        (["fake.npz", "o.npz"], "fake.npz: not an .npz archive"),
    ],
)
def test_encode(files, tiny_model_dir, args, fragment):
    assert_clean_error(encode(files, tiny_model_dir, *args), fragment)
    assert not list(files.glob("*.tmp.npz"))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", "abc"], "--seed must be an integer from 0 to 2**63 - 1, got 'abc'"),
        (
            ["--seed", "99999999999999999999"],
            "--seed must be an integer from 0 to 2**63 - 1, got 99999999999999999999",
        ),
        (["--run_name", ""], "--run_name must be one directory name under --checkpoint_dir"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--checkpoint_dir", "somefile"], "cannot create the run directory"),
        (["--sequence_lenght", "5"], "unknown flag --sequence_lenght; did you mean --seq"),
        (["data.txt"], "no positional arguments are taken (got 'data.txt')"),
    ],
)
def test_train(files, tiny_model_dir, args, fragment):
    base = ["--model_name", tiny_model_dir, "--dataset", "x.txt", "--steps", "1"]
    if "--checkpoint_dir" not in args:
        base += ["--checkpoint_dir", str(files / "ckpt")]
    r = run_in_process(["-m", "gpt2_tf2.train", *base, *args], cwd=files)
    assert_clean_error(r, fragment)
    assert not (files / "ckpt").exists()  # a start that fails leaves no run directory


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["124M", "--base_url", "notaurl"], "not a URL"),
        (["124M", "--timeout", "-1"], "--timeout must be a number of seconds > 0"),
    ],
)
def test_download(tmp_path, args, fragment):
    r = run_in_process(["-m", "gpt2_tf2.download", *args, "--models_dir", str(tmp_path)])
    assert_clean_error(r, fragment)


def test_sample_refuses_a_positional_prompt_and_unknown_flags(tiny_model_dir):
    r = run_in_process(["-m", "gpt2_tf2.sample", "Hello world", "--model_name", tiny_model_dir])
    assert_clean_error(r, "got 'Hello world'")
    r = run_in_process(["-m", "gpt2_tf2.sample", "--lenght", "5", "--model_name", tiny_model_dir])
    assert_clean_error(r, "unknown flag --lenght; did you mean --length?")


@pytest.mark.e2e
def test_help_is_a_flag_list(tiny_model_dir):
    commands = ["sample", "score", "encode", "train", "export", "download", "init"]
    for command in commands + ["vocab train", "vocab stats"]:
        module, *sub = command.split()
        r = run_cli(["-m", f"gpt2_tf2.{module}", *sub, "--help"])
        assert r.returncode == 0 and r.stderr == "", (command, r.stderr)
        for noise in ("INFO:", "VALUE", "uses_xla", "uses_tensorflow", "Type:", "positional ="):
            assert noise not in r.stdout, (command, noise)
        assert r.stdout.startswith(f"usage: gpt2_tf2.{command}")
        assert "\nflags:\n" in r.stdout
        assert "--verbose" in r.stdout or command == "vocab stats"
    # The one entry point, as the Docker images run it: every command, subcommands too.
    r = run_cli(["-m", "gpt2_tf2", "vocab", "stats", "--help"])
    assert r.returncode == 0 and r.stdout.startswith("usage: gpt2_tf2.vocab stats")
    r = run_cli(["-m", "gpt2_tf2", "vocab"])
    assert r.returncode == 0 and "train" in r.stdout and "stats" in r.stdout
    # --help answers at once: TensorFlow (seconds to import) is not loaded for it.
    for command in ("sample", "train"):
        r = run_cli(["-X", "importtime", "-m", f"gpt2_tf2.{command}", "--help"])
        assert r.returncode == 0 and "| tensorflow" not in r.stderr, command
        assert "| fire" in r.stderr  # the import log is there to be read


@pytest.mark.e2e
def test_a_checkpoint_index_naming_a_missing_file(model_copy):
    (model_copy / "checkpoint").write_text('model_checkpoint_path: "gone.ckpt"\n')
    for name in os.listdir(model_copy):
        if name.startswith("model.ckpt"):
            os.remove(model_copy / name)
    r = run_cli(["-m", "gpt2_tf2.sample", "--model_name", str(model_copy), "--length", "2"])
    assert_clean_error(r, "no checkpoint found")
    assert "ERROR" not in r.stderr


def test_a_release_lacking_only_its_meta_graph_loads_offline(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "124M")
    os.remove(tmp_path / "124M" / "model.ckpt.meta")
    args = ["--models_dir", str(tmp_path), "--offline", "--length", "2", "--seed", "1"]
    r = run_in_process(["-m", "gpt2_tf2.sample", *args])
    assert r.returncode == 0, r.stderr


def test_score_shows_progress_on_long_texts(tiny_model_dir, tmp_path):
    (tmp_path / "long.txt").write_text("Hello world, again and again. " * 60, encoding="utf-8")
    r = run_in_process(
        ["-m", "gpt2_tf2.score", str(tmp_path / "long.txt"), "--model_name", tiny_model_dir]
    )
    assert r.returncode == 0, r.stderr
    assert "window" in r.stderr


def test_write_model_dir_below_a_file(tmp_path, vocab_files):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="cannot create the directory"):
        write_random_model(tmp_path / "file.txt" / "x", vocab_files)


def test_the_model_takes_numpy_arrays_and_lists(tiny_lm):
    lm = tiny_lm
    want = lm.model(np.array([[464, 2068]], np.int32))["logits"].numpy()
    for tokens in (np.array([[464, 2068]]), [[464, 2068]]):  # int64, as NumPy makes them
        assert np.array_equal(lm.model(tokens)["logits"].numpy(), want)


@pytest.mark.e2e
def test_import_from_the_parent_of_a_clone(tmp_path):
    """`cd ..; python -c "import gpt2_tf2"`: the clone's folder, named like the package, must
    not shadow the installed package (an editable install that puts the clone on sys.path). A
    fresh interpreter: import-time behaviour is the subject."""
    os.symlink(REPO, tmp_path / "gpt2_tf2")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import gpt2_tf2; print(gpt2_tf2.__file__); gpt2_tf2.load"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert os.path.realpath(r.stdout.strip()).endswith(os.path.join("gpt2_tf2", "__init__.py"))
