"""Every command-line path, as a user runs it: through the entry point in this process where the
command's logic is the subject (`run_in_process`), in a subprocess where the process is (what
reaches stderr as TensorFlow loads, the tools/ scripts, the on-disk XLA cache between runs)."""

import json
import os
import re
import shutil

import pytest

from conftest import run_cli, run_in_process, tree_digest

HEADER = re.compile(r"={40} SAMPLE (\d+) ={40}\n")


@pytest.fixture(scope="module")
def models_root(tiny_model_dir, tmp_path_factory):
    """A models/ directory holding the tiny model under the release name 124M."""
    root = tmp_path_factory.mktemp("cli_models")
    shutil.copytree(tiny_model_dir, root / "124M")
    return str(root)


def sample(models_root, *args, input=None, process=False):
    run = run_cli if process else run_in_process
    return run(["-m", "gpt2_tf2.sample", "--models_dir", models_root, *args], input=input)


def bodies(stdout):
    """The sample texts between headers."""
    return [
        part[1:].rstrip("\n") if part.startswith("\n") else part
        for part in HEADER.split(stdout)[2::2]
    ]


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.e2e
def test_unconditional(models_root):
    """A process: what reaches stderr while TensorFlow loads is the subject."""
    args = ("--nsamples", "3", "--batch_size", "2", "--length", "5", "--seed", "7")
    r = sample(models_root, *args, process=True)
    assert r.returncode == 0, r.stderr
    assert [int(n) for n in HEADER.findall(r.stdout)] == [1, 2, 3]
    assert r.stderr == ""  # TensorFlow's start-up lines are hidden


def test_conditional_is_seeded_and_excludes_prompt(models_root):
    args = (
        "--prompt",
        "3.10 is a version",
        "--length",
        "6",
        "--seed",
        "3",
        "--top_k",
        "40",
        "--top_p",
        "0.9",
    )
    a, b = sample(models_root, *args), sample(models_root, *args)
    assert a.returncode == 0 and a.stdout == b.stdout
    assert "3.10 is a version" not in a.stdout
    assert len(bodies(a.stdout)) == 1


def test_prompt_file_and_stdin(models_root, tmp_path):
    (tmp_path / "p.txt").write_text("Once upon a time", encoding="utf-8")
    args = ("--length", "4", "--seed", "1", "--temperature", "0")
    from_file = sample(models_root, "--prompt_file", str(tmp_path / "p.txt"), *args)
    from_stdin = sample(models_root, "--prompt_file", "-", *args, input="Once upon a time")
    from_flag = sample(models_root, "--prompt", "Once upon a time", *args)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == from_stdin.stdout == from_flag.stdout


def test_model_name_as_path(tiny_model_dir):
    r = run_in_process(["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--length", "3"])
    assert r.returncode == 0, r.stderr
    assert len(HEADER.findall(r.stdout)) == 1


def test_commands_in_process_share_a_model_only_while_its_files_are_unchanged(
    model_copy, vocab_files
):
    """conftest's `_CommandLoads`: a command run in-process again on the same model gets the
    model an earlier one loaded (its programs compiled); once a weight file changes, a new load
    whose samples are the new weights'."""
    from conftest import _COMMANDS, write_random_model

    args = ["-m", "gpt2_tf2.sample", "--model_name", str(model_copy), "--length", "6"]
    args += ["--top_k", "1"]  # greedy: near-uniform logits leave a sample to the seed

    def sample_and_model():
        r = run_in_process(args)
        assert r.returncode == 0, r.stderr
        (lm,) = [lm for _, lm in _COMMANDS.loaded.values() if lm.model_dir == str(model_copy)]
        return r.stdout, lm

    first, lm = sample_and_model()
    assert sample_and_model() == (first, lm)  # the same model object, the same samples
    write_random_model(model_copy, vocab_files, seed=1)  # other weights, same names and sizes
    other, new_lm = sample_and_model()
    assert new_lm is not lm and other != first


def test_interactive(models_root):
    r = sample(
        models_root,
        "--interactive",
        "--length",
        "3",
        "--nsamples",
        "2",
        "--seed",
        "1",
        input="Hello\n\nWorld\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Model prompt >>> ") == 4
    assert "Prompt should not be empty!" in r.stdout
    assert [int(n) for n in HEADER.findall(r.stdout)] == [1, 2, 3, 4]
    assert r.stdout.count("=" * 80 + "\n") == 2


def test_interactive_long_prompt_is_reported_and_loop_goes_on(models_root):
    r = sample(models_root, "--interactive", "--length", "10", input=" a" * 70 + "\nHi\n")
    assert r.returncode == 0
    assert "fills the model's context of 64" in r.stderr
    assert len(HEADER.findall(r.stdout)) == 1
    # A message naming a setting says it as the flag, as the command's other errors do.
    args = ["--interactive", "--num_beams", "2", "--length", "60"]
    r = sample(models_root, *args, input=" a" * 10 + "\n")
    assert r.returncode == 0 and "prompt (10 tokens) + --length (60)" in r.stderr, r.stderr


def test_stop_at_endoftext_flag(models_root):
    r = sample(models_root, "--length", "5", "--stop_at_endoftext", "--seed", "2")
    assert r.returncode == 0, r.stderr


@pytest.mark.e2e
def test_drop_in_tools(models_root):
    r = run_cli(
        [
            "tools/generate_unconditional_samples.py",
            "--models_dir",
            models_root,
            "--nsamples",
            "2",
            "--length",
            "4",
            "--top_k",
            "40",
            "--seed",
            "5",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert len(HEADER.findall(r.stdout)) == 2
    r = run_cli(
        [
            "tools/interactive_conditional_samples.py",
            "--models_dir",
            models_root,
            "--model_name",
            "124M",
            "--length",
            "4",
            "--top_p",
            "0.9",
            "--temperature",
            "0.8",
            "--seed",
            "5",
        ],
        input="Hello there\n",
    )
    assert r.returncode == 0, r.stderr
    assert "Model prompt >>> " in r.stdout and len(HEADER.findall(r.stdout)) == 1


def test_help_explains_every_flag():
    r = run_cli(["-m", "gpt2_tf2.sample", "--help"])
    assert r.returncode == 0
    for flag in (
        "model_name",
        "models_dir",
        "seed",
        "nsamples",
        "batch_size",
        "length",
        "temperature",
        "top_k",
        "top_p",
        "prompt",
        "prompt_file",
        "interactive",
        "stop_at_endoftext",
        "verbose",
    ):
        assert re.search(rf"--{flag}\b.*\n\s+\S", r.stdout), flag


def test_console_command_lists_commands():
    r = run_cli(["-m", "gpt2_tf2", "--help"])
    assert r.returncode == 0 and "sample" in r.stdout and "score" in r.stdout


def test_score(models_root, tmp_path):
    (tmp_path / "t.txt").write_text("Hello world. " * 40, encoding="utf-8")
    r = run_in_process(
        ["-m", "gpt2_tf2.score", str(tmp_path / "t.txt"), "--models_dir", models_root, "--json"]
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["tokens"] == 121 and result["nll"] > 0
    assert abs(result["perplexity"] - 2.718281828 ** result["nll"]) < 1e-6 * result["perplexity"]
    text = run_in_process(
        ["-m", "gpt2_tf2", "score", str(tmp_path / "t.txt"), "--models_dir", models_root]
    )
    assert "tokens: 121" in text.stdout and "perplexity:" in text.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--length", "-5"], ["length must be a positive integer"]),
        (["--top_p", "1.5"], ["top_p must be in (0, 1]"]),
        (["--top_p", "0"], ["top_p"]),
        (["--top_k", "-1"], ["top_k"]),
        (["--temperature", "-0.5"], ["temperature"]),
        (["--nsamples", "-1"], ["nsamples"]),
        (["--model_name", "999M"], ["unknown model '999M'"]),
        (["--model_name", "355M", "--offline"], ["not found", "python -m gpt2_tf2.download 355M"]),
        (["--window_stride", "64"], ["window_stride must be an integer in 1..63"]),
        (
            [
                "--prompt",
                "one two three four five six seven eight nine ten",
                "--length",
                "60",
                "--num_beams",
                "2",
            ],
            ["prompt (10 tokens) + --length (60)", "lower --length"],
        ),
        (["--prompt", " a" * 64], ["fills the model's context of 64"]),
        (["--prompt", "x", "--nsamples", "0"], ["unconditional sampling only"]),
        (["--prompt_file", "/nonexistent/p.txt"], ["/nonexistent/p.txt"]),
        (["--dtype", "int2"], ["dtype must be one of float32, float16, bfloat16, int8, int4"]),
    ],
)
def test_bad_flags(models_root, args, fragments):
    assert_clean_error(sample(models_root, *args), *fragments)


def test_bad_model_dirs(models_root, tmp_path):
    def damaged(name, damage):
        path = tmp_path / name
        shutil.copytree(os.path.join(models_root, "124M"), path)
        damage(path)
        return sample(models_root, "--model_name", str(path), "--length", "2")

    def truncate(p):
        data = p / "model.ckpt.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:1000])

    def wrong_hparams(p):
        hp = json.loads((p / "hparams.json").read_text())
        (p / "hparams.json").write_text(json.dumps({**hp, "n_layer": 3}))

    def bad_json(p):
        (p / "hparams.json").write_text("{not json")

    def no_vocab(p):
        (p / "vocab.bpe").unlink()

    assert_clean_error(damaged("trunc", truncate), "corrupt")
    assert_clean_error(damaged("hp", wrong_hparams), "lacks variable model/h2/")
    assert_clean_error(damaged("json", bad_json), "not valid JSON")
    assert_clean_error(damaged("vocab", no_vocab), "vocab.bpe: not found")


@pytest.mark.e2e
def test_verbose_shows_tensorflow_logs(models_root):
    r = sample(models_root, "--length", "2", "--verbose", process=True)
    assert r.returncode == 0


def test_prompt_too_long_is_reported_before_loading_weights(models_root, tmp_path):
    """The weights are damaged: only an error raised before reading them can name the prompt."""
    path = tmp_path / "damaged"
    shutil.copytree(os.path.join(models_root, "124M"), path)
    (path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    too_long = sample(
        models_root, "--model_name", str(path), "--prompt", " a" * 64, "--length", "5"
    )
    assert_clean_error(too_long, "the prompt (64 tokens) fills the model's context")
    bad_flag = sample(models_root, "--model_name", str(path), "--top_p", "2")
    assert_clean_error(bad_flag, "top_p")
    assert_clean_error(sample(models_root, "--model_name", str(path)), "corrupt")


def test_switches_and_text_flags_come_from_each_signature():
    """A switch takes no value (the next flag keeps its number); text flags stay text."""
    from gpt2_tf2.cli import runner as cli
    from gpt2_tf2.encode import encode
    from gpt2_tf2.train import train

    texts, switches = cli._flag_kinds(train)
    argv = ["--memory_saving_gradients", "--sequence_length", "8", "--dataset", "1e3"]
    assert cli._positional_strings(cli._keep_strings(argv, texts), switches) == [
        "--memory_saving_gradients",
        "--sequence_length",
        "8",
        "--dataset",
        "'1e3'",
    ]
    texts, switches = cli._flag_kinds(encode)
    assert cli._positional_strings(["2024.txt", "out.npz", "--combine", "10"], switches) == [
        "'2024.txt'",
        "'out.npz'",
        "--combine",
        "10",
    ]


def test_short_switches_take_no_value():
    from gpt2_tf2.cli import runner as cli
    from gpt2_tf2.sample import sample as sample_command

    texts, switches = cli._flag_kinds(sample_command)
    assert {"i", "v"} <= switches and "s" not in switches  # seed, stop_at_endoftext share "s"
    argv = cli._positional_strings(cli._keep_strings(["-i", "--length", "3"], texts), switches)
    assert argv == ["-i", "--length", "3"]


def test_short_interactive_flag(models_root):
    r = sample(models_root, "-i", "--length", "3", "--seed", "1", input="Hello\n")
    assert r.returncode == 0, r.stderr
    assert "Model prompt >>> " in r.stdout and len(HEADER.findall(r.stdout)) == 1


@pytest.mark.e2e
def test_dtype_and_persistent_xla_cache(models_root, tmp_path):
    """--dtype bfloat16 samples; compiled decode loops are kept in GPT2_TF2_XLA_CACHE and a
    second run with the same shapes reads them back (same output, nothing new written). Before
    TensorFlow 2.21 the cache is off: nothing is written and nothing is printed."""
    import tensorflow as tf

    cache = tmp_path / "xla"
    args = ["--models_dir", models_root, "--length", "5", "--seed", "2", "--prompt", "Hi"]
    env = {"GPT2_TF2_XLA_CACHE": str(cache)}
    first = run_cli(["-m", "gpt2_tf2.sample", *args, "--dtype", "bfloat16"], env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    assert len(bodies(first.stdout)) == 1
    stored = sorted(tree_digest(cache)) if cache.exists() else []
    again = run_cli(["-m", "gpt2_tf2.sample", *args, "--dtype", "bfloat16"], env=env)
    assert again.stdout == first.stdout and again.stderr == "", again.stderr
    if tuple(int(p) for p in tf.__version__.split(".")[:2]) < (2, 21):
        assert not cache.exists()
    else:
        assert stored, "nothing was cached"
        assert sorted(tree_digest(cache)) == stored  # read back, not compiled and written again
        # The suite's XLA_FLAGS (its level): their own subdirectory (xla_cache_dir).
        assert all(path.startswith("xla_flags-") for path in stored), stored
    off = run_cli(["-m", "gpt2_tf2.sample", *args], env={"GPT2_TF2_XLA_CACHE": ""})
    assert off.returncode == 0, off.stderr


def test_the_xla_cache_lives_in_the_users_cache_unless_told(monkeypatch, tmp_path):
    """GPT2_TF2_XLA_CACHE names the directory ('' turns the cache off); without it, compiled
    programs go under $XDG_CACHE_HOME (else ~/.cache), one directory per TensorFlow version."""
    from gpt2_tf2.cli import runner
    from gpt2_tf2.cli.runner import xla_cache_dir

    # The installed TensorFlow decides whether the cache is on (off before 2.21, whose cache
    # entries 2.17 cannot read back): pin it, so that both sides are tested on either line.
    monkeypatch.setattr(runner, "tf_version", lambda: ("tensorflow", "2.17.1"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the suite's own level: below
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", str(tmp_path / "mine"))
    assert xla_cache_dir() is None
    monkeypatch.setattr(runner, "tf_version", lambda: ("tensorflow-cpu", "2.21.0"))
    monkeypatch.delenv("GPT2_TF2_XLA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xla_cache_dir() == str(tmp_path / "gpt2_tf2" / "xla" / "tensorflow-cpu-2.21.0")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert xla_cache_dir().startswith(str(tmp_path / "home" / ".cache" / "gpt2_tf2" / "xla"))
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", "")
    assert xla_cache_dir() is None
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", str(tmp_path / "mine"))
    assert xla_cache_dir() == str(tmp_path / "mine")


def test_programs_compiled_under_other_xla_flags_are_kept_apart(monkeypatch, tmp_path):
    """TensorFlow's on-disk cache keys a program by itself, not by the XLA_FLAGS it was compiled
    under: each set of flags gets a subdirectory of its own (the same flags in any order the
    same one), in the user's cache and in a directory GPT2_TF2_XLA_CACHE names alike."""
    from gpt2_tf2.cli import runner
    from gpt2_tf2.cli.runner import xla_cache_dir

    monkeypatch.setattr(runner, "tf_version", lambda: ("tensorflow-cpu", "2.21.0"))
    monkeypatch.delenv("GPT2_TF2_XLA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    plain = str(tmp_path / "gpt2_tf2" / "xla" / "tensorflow-cpu-2.21.0")
    seen = {}
    for flags in [
        "",
        "  ",
        "--xla_backend_optimization_level=0",
        "--xla_backend_optimization_level=3",
        "--xla_cpu_enable_fast_math=true --xla_backend_optimization_level=0",
        "--xla_backend_optimization_level=0  --xla_cpu_enable_fast_math=true",
    ]:
        monkeypatch.setenv("XLA_FLAGS", flags)
        seen[flags] = xla_cache_dir()
    assert seen[""] == seen["  "] == plain
    levels = [seen[f"--xla_backend_optimization_level={n}"] for n in (0, 3)]
    assert all(os.path.dirname(d) == plain for d in levels) and levels[0] != levels[1]
    both = [d for f, d in seen.items() if "fast_math" in f]
    assert both[0] == both[1] and both[0] not in levels
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", str(tmp_path / "mine"))
    assert os.path.dirname(xla_cache_dir()) == str(tmp_path / "mine")
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", "")
    assert xla_cache_dir() is None


def test_a_command_sets_the_xla_cache_flag_with_tensorflow_imported_already(monkeypatch, tmp_path):
    """A command run in a process that has TensorFlow imported (this one; a user's script calling
    its `main`) keeps its compiled loops in the cache as a fresh command does: TensorFlow reads
    the flag at its first compilation, not at its import (`gpt2_tf2.load` alike:
    test_guards)."""
    from gpt2_tf2.cli import runner

    monkeypatch.setattr(runner, "tf_version", lambda: ("tensorflow", "2.21.0"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    runner.configure_logging(False)
    want = f"--tf_xla_persistent_cache_directory={tmp_path / 'c'}"
    assert os.environ["TF_XLA_FLAGS"] == want


def test_the_xla_cache_flag_is_set_once_and_a_users_own_is_kept(monkeypatch, tmp_path):
    """`configure_xla_cache` (the command line's runner and `gpt2_tf2.load` call it) adds the
    cache's directory to TF_XLA_FLAGS beside the user's other flags, once; a directory the user
    gave there wins, and GPT2_TF2_XLA_CACHE='' leaves the flags alone."""
    from gpt2_tf2.cli import runner

    monkeypatch.setattr(runner, "tf_version", lambda: ("tensorflow", "2.21.0"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the suite's level: a subdirectory
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    runner.configure_xla_cache()
    runner.configure_xla_cache()
    want = f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={tmp_path / 'c'}"
    assert os.environ["TF_XLA_FLAGS"] == want and (tmp_path / "c").is_dir()
    mine = "--tf_xla_persistent_cache_directory=/elsewhere"
    monkeypatch.setenv("TF_XLA_FLAGS", mine)
    runner.configure_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == mine
    monkeypatch.delenv("TF_XLA_FLAGS")
    monkeypatch.setenv("GPT2_TF2_XLA_CACHE", "")
    runner.configure_xla_cache()
    assert "TF_XLA_FLAGS" not in os.environ
