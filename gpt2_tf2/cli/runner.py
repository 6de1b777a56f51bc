"""The shared runner of every entry point, and the only code that touches process-wide state.

Each command is a plain function run by python-fire. The runner hides TensorFlow's start-up
logging (unless --verbose), sets up the devices and the on-disk XLA cache, turns a `UserError`
into one line on stderr and exit status 2, and keeps flags that name text or paths as strings
(fire would read `--prompt 3.10` as a float).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import re
import sys
import tempfile

from gpt2_tf2.cli import flags
from gpt2_tf2.core.lazy import installed as tf_version  # read without importing TensorFlow
from gpt2_tf2.core.lazy import version_tuple

# Flags without a default string that still take text or a path, never a number or a list.
# Flags whose default is a string are text too; flags whose default is a bool are switches.
TEXT_FLAGS = {
    "prompt",
    "prompt_file",
    "prompts_file",
    "file",
    "out",
    "run_name",
    "base_url",
    "dataset",
    "val_dataset",
    "in_text",
    "out_npz",
    "truncate",
    "destination_path",
    "png",
}

# What TensorFlow's C++ side prints while it is imported: absl log lines
# ("I0000 00:00:... file.cc:31]") and absl's notice about logging before InitializeLog.
# TF_CPP_MIN_LOG_LEVEL does not hide them (TF >= 2.16).
_TF_NOISE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:|WARNING: All log messages before absl::"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)


def xla_cache_dir() -> str | None:
    """Where compiled XLA programs persist between runs: $GPT2_TF2_XLA_CACHE ('' turns it off),
    else ~/.cache/gpt2_tf2/xla/<TensorFlow version>. None (off) before TensorFlow 2.21: 2.17
    writes entries it cannot read back ("Error parsing text-format XlaSerializedCacheEntry" on
    every later run); 2.21 was tested to work.

    Under an XLA_FLAGS, a subdirectory named by its hash: TensorFlow's key for an entry is the
    program, not the flags it was compiled with, so a run with other flags (fast math, another
    optimisation level) would otherwise read programs compiled under the earlier run's (seen:
    a run at --xla_backend_optimization_level=0 stepped at level 3's speed, and the reverse)."""
    found = tf_version()
    if found is None or version_tuple(found[1]) < (2, 21):
        return None
    if "GPT2_TF2_XLA_CACHE" in os.environ:
        directory = os.environ["GPT2_TF2_XLA_CACHE"] or None
    else:
        from gpt2_tf2.files import user_cache_dir

        directory = user_cache_dir("xla", "-".join(found))
    flags = sorted(os.environ.get("XLA_FLAGS", "").split())
    if directory is None or not flags:
        return directory
    digest = hashlib.sha256(" ".join(flags).encode("utf-8")).hexdigest()[:16]
    return os.path.join(directory, f"xla_flags-{digest}")


def configure_xla_cache() -> None:
    """Let TensorFlow keep compiled decode loops on disk, so that a later run with the same model
    shape skips most of the compilation (measured at 124M: 3.0 -> 1.4 s). The command line
    calls it before TensorFlow's import, the Python API through `gpt2_tf2.quiet`; TensorFlow
    reads the flag at the process's first XLA compilation, so until then is early enough."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    directory = xla_cache_dir()
    if directory is None or "tf_xla_persistent_cache_directory" in flags:
        return
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return  # a read-only home: compile every time
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


def configure_logging(verbose: bool, xla: bool = False, setup=None):
    """Hide TensorFlow's start-up logs unless verbose, and set up the XLA cache (before
    TensorFlow's first compilation: `configure_xla_cache`). Call before anything imports
    TensorFlow, or the logs are TensorFlow's own. `xla`: the command compiles with XLA, whose
    first compilation logs a few more lines once per process (TF 2.17); they are triggered
    here, while hidden.
    `setup`: what must run before TensorFlow's first operation (device configuration, a
    `tf.distribute` strategy); its result is returned."""
    configure_xla_cache()  # also when TensorFlow is imported already (a command run in-process)
    if verbose or "tensorflow" in sys.modules:
        return setup() if setup else None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with hidden_stderr():
        tf = import_tensorflow_without_keras()
        result = setup() if setup else None
        if xla:  # autograph=False: autograph writes its conversion to a file in TMPDIR
            tf.function(lambda x: x + 1, jit_compile=True, autograph=False)(tf.constant(1.0))
    tf.get_logger().setLevel("ERROR")
    return result


def configure_tensorflow(verbose: bool, dtype: str, backend: str | None) -> None:
    """`configure_logging` for a command that runs a model (xla: its loops are compiled), now;
    on the tflite backend, when TensorFlow is first needed (`core.lazy`): greedy decoding from
    a cached conversion needs none, and its import takes seconds. Devices are set up then too."""
    from gpt2_tf2.core import lazy
    from gpt2_tf2.generation.checks import check_dtype

    if check_dtype(dtype, backend) == "xla" or verbose or "tensorflow" in sys.modules:
        configure_logging(verbose, xla=True)
        return

    def quietly():
        configure_logging(False, xla=True)
        setup_devices(False)

    lazy.import_with(quietly)


def import_tensorflow_without_keras():
    """`import tensorflow`, without the import of Keras that TensorFlow's `__init__` makes
    eagerly (`keras.src.optimizers`, to register Keras' optimizers for SavedModels that hold
    them: b/196254385; it ignores an ImportError there). gpt2_tf2 uses no Keras, and importing
    it (with matplotlib, which Keras imports when installed) took ~0.8 s of every command's
    ~4 s start. `tf.keras` still imports Keras when first used (TensorFlow's lazy loader)."""
    import importlib

    real = importlib.import_module

    def deferred(name, package=None):
        if name.endswith("keras.src.optimizers"):
            raise ImportError(f"{name}: deferred by gpt2_tf2 until tf.keras is used")
        return real(name, package)

    importlib.import_module = deferred
    try:
        import tensorflow as tf
    finally:
        importlib.import_module = real
    return tf


@contextlib.contextmanager
def hidden_stderr():
    """Hide what TensorFlow's C++ code writes to stderr (file descriptor 2) meanwhile; any other
    line (an import error) is shown afterwards. Yields a writer to the real stderr, for what
    must be seen at once."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lambda message: os.write(saved, (message + "\n").encode())
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not _TF_NOISE.match(line):
                    print(line, file=sys.stderr)


def setup_devices(verbose: bool = False) -> str:
    """Turn on GPU memory growth, so we coexist with other programs (WSL2 shares the GPU with
    Windows); say which device is used when verbose or GPT2_TF2_SHOW_DEVICE=1 (the Docker images
    set it). Returns the description."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already initialised by an earlier call
            pass
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    described = ("GPU: " + ", ".join(names)) if gpus else "CPU (no GPU visible to TensorFlow)"
    if verbose or os.environ.get("GPT2_TF2_SHOW_DEVICE") == "1":
        print(f"device: {described}", file=sys.stderr)
    return described


def flag(default, help: str):
    """A command's flag as a dataclass field: its default and its help (`flags.config_fields`)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    """The flags that choose and load a model, for the commands that run one (sample, serve);
    `load_chosen` loads it."""

    model_name: str = flag(
        "124M",
        "release name under models_dir (124M, 355M, 774M, 1558M; 117M and 345M are aliases) or "
        "a path to a model directory in OpenAI's layout.",
    )
    models_dir: str = flag("models", "directory holding the release directories.")
    run_name: str | None = flag(
        None, "use a fine-tuning run's newest checkpoint instead of model_name."
    )
    checkpoint_dir: str = flag("checkpoint", "where run directories live.")
    offline: bool = flag(False, "never download; a release missing from models_dir is an error.")
    dtype: str = flag(
        "float32",
        "float32 (the released weights as they are), float16 or bfloat16: weights and "
        "activations in 16 bits, half the memory (docs/sampling.md, 'Speed, compilation and "
        "memory'); meant for GPUs, slower than float32 on CPUs. Layer norms, softmax and "
        "logits stay float32. int8: weights in 8 bits on the tflite backend, a quarter of the "
        "memory and on a CPU about twice float32's speed, logits within about 0.1 of "
        "float32's (docs/tflite.md). int4: weights in 4 bits (a scale per 32) on the tflite "
        "backend, an eighth of the memory and faster again at batch 1; on the demo model's "
        "held-out text 0.03-0.04 nats a token worse than float32 (int8: 0.002).",
    )
    backend: str | None = flag(
        None,
        "xla (TensorFlow's compiled loops) or tflite (TensorFlow Lite with XNNPACK; the model is "
        "converted once, 10-15 s at 124M, and cached). Default: tflite for --dtype int8 and "
        "int4, else xla (float32 as earlier releases, bit for bit). float32 on tflite starts "
        "sooner, greedy decoding without TensorFlow once converted (124M's first 128 tokens: "
        "1.6 s against 6.3 s), and decodes about as fast (docs/benchmarks/cpu.md).",
    )


def load_chosen(opts: ModelFlags, verbose: bool):
    """The model `opts` choose, loaded as `load_model` loads it."""
    return load_model(
        opts.model_name,
        opts.models_dir,
        opts.offline,
        opts.run_name,
        opts.checkpoint_dir,
        verbose,
        opts.dtype,
        opts.backend,
    )


def load_model(
    model_name,
    models_dir,
    offline,
    run_name,
    checkpoint_dir,
    verbose,
    dtype="float32",
    backend=None,
):
    """Load for a command: devices set up, a missing release downloaded unless offline; a
    conversion to TensorFlow Lite (once per model) said on stderr."""
    # Imported here: TensorFlow loads after logging is configured.
    from gpt2_tf2.generation import language_model

    backend = language_model.check_dtype(dtype, backend)  # before any download
    if backend == "xla" or "tensorflow" in sys.modules:  # else when imported (configure_tensorflow)
        setup_devices(verbose)
    args = (model_name, models_dir, not offline, run_name, checkpoint_dir, dtype, backend)
    if backend == "xla" or verbose:
        return language_model.load(*args, progress=say)
    with hidden_stderr() as tell:  # TFLite's "INFO: Created ... XNNPACK delegate" line
        return language_model.load(*args, progress=tell)


def say(message: str) -> None:
    """A note on stderr, apart from a command's output (a conversion that takes a while)."""
    print(message, file=sys.stderr, flush=True)


def _flag_kinds(fn) -> tuple[set[str], set[str]]:
    """(text flags, switches) of a command, read off its signature."""
    params = inspect.signature(fn).parameters.values()
    switches = {p.name for p in params if isinstance(p.default, bool)}
    texts = {p.name for p in params if isinstance(p.default, str) or p.name in TEXT_FLAGS}
    # fire also accepts -x for the one parameter whose name starts with x, if only one does;
    # a command may name more (`fn.short`, expanded by `expand_short` before fire sees them).
    initials = [p.name[0] for p in params]
    short = {name[0] for name in switches if initials.count(name[0]) == 1}
    short |= set(getattr(fn, "short", {}))
    return texts, switches | {"no" + name for name in switches} | short


def expand_short(fn, argv: list[str]) -> list[str]:
    """`-x` as the command's `fn.short` names it (sample's `-i`, kept when another flag
    starting with i came), as `--name`."""
    short = getattr(fn, "short", {})
    return [
        f"--{short[a[1:]]}" if len(a) == 2 and a[0] == "-" and a[1:] in short else a for a in argv
    ]


def _keep_strings(argv: list[str], texts: set[str]) -> list[str]:
    """Quote the values of text flags so fire passes them through as the exact text given."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else None
        if name in texts:
            if "=" in arg:
                out.append(f"--{name}={arg.split('=', 1)[1]!r}")
            elif i + 1 < len(argv):
                out += [arg, repr(argv[i + 1])]
                i += 1
            else:
                out.append(arg)
        else:
            out.append(arg)
        i += 1
    return out


def _positional_strings(argv: list[str], switches: set[str]) -> list[str]:
    """Quote positional arguments (files, model names), which are never numbers either."""

    def is_switch(arg):
        return arg.lstrip("-").replace("-", "_") in switches

    out, expect_value = [], False
    for arg in argv:
        if expect_value or (out and is_switch(out[-1]) and arg in ("True", "False")):
            out.append(arg)
            expect_value = False
        elif arg.startswith("-") and arg != "-":
            out.append(arg)
            expect_value = "=" not in arg and arg not in ("--help", "-h") and not is_switch(arg)
        elif arg.startswith("'"):
            out.append(arg)
        else:
            out.append(repr(arg))
    return out


def run(fn, argv: list[str] | None = None, name: str | None = None) -> None:
    """Run `fn` under fire with our error handling; exits the process."""
    import fire

    from gpt2_tf2.errors import UserError, flag_spelling

    argv = list(sys.argv[1:] if argv is None else argv)
    # A command that must configure devices before TensorFlow's first operation (train) calls
    # configure_logging itself, with its setup.
    itself = getattr(fn, "configures_logging", False)
    helping = "--help" in argv or "-h" in argv  # help needs no TensorFlow: it shows at once
    quiet = "--verbose" not in argv and not helping and not itself
    texts, switches = _flag_kinds(fn)
    name = name or fn.__name__
    try:
        if helping:
            print(flags.help_text(fn, name), flush=True)  # not fire's: no pager, no internals
            sys.exit(0)
        argv = expand_short(fn, argv)
        flags.check_argv(fn, argv, switches)  # an unknown flag is one line at once
        if quiet and getattr(fn, "uses_tensorflow", True):
            configure_logging(False, xla=getattr(fn, "uses_xla", False))
        argv = _positional_strings(_keep_strings(argv, texts), switches)
        fire.Fire(fn, command=argv, name=name)
    except UserError as e:
        own = set(inspect.signature(fn).parameters)
        print(f"error: {flag_spelling(str(e), own)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `... | head`: the reader is gone; exit quietly like other command-line tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    sys.exit(0)


def read_prompt_file(path: str) -> str:
    """The text of a prompt file, or of stdin for '-'."""
    from gpt2_tf2.errors import UserError

    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    if not text:
        raise UserError(f"{path}: file is empty")
    return text


def run_subcommand(commands: dict, argv: list[str] | None, name: str) -> None:
    """`name SUBCOMMAND ...`: run the function `commands[SUBCOMMAND]`, or list them (its
    docstring's first line each); exits the process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        lines = "\n".join(
            f"  {sub:8s} {fn.__doc__.strip().splitlines()[0]}" for sub, fn in commands.items()
        )
        print(f"usage: {name} {'|'.join(commands)} ... (--help for each)\n\n{lines}")
        if argv and argv[0] not in ("-h", "--help", "help"):
            print(
                f"error: unknown subcommand {argv[0]!r}; use {' or '.join(commands)}",
                file=sys.stderr,
            )
            sys.exit(2)
        sys.exit(0)
    run(commands[argv[0]], argv[1:], name=f"{name} {argv[0]}")
