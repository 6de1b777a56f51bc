"""TensorFlow Lite files: a model's decode step (`core.tflite_step`) converted once, kept in a cache
on disk, or exported beside its vocabulary for TFLite's other bindings.

TFLite's converter runs on a template whose blocks share stand-in weights, and the real weights
are written into its output after (`tflite_template`: the converter alone needed 16 GB for
1558M). The template goes through a temporary SavedModel holding its weights as variables (a
concrete function with constants is one GraphDef, which protobuf caps at 2 GB). For sampling,
a model past PART_BYTES of weights is converted in parts of its blocks (`cached_parts`), so
that it is never packed by XNNPACK beside its whole mapped file.

`dtype` int8 is TFLite's dynamic-range quantization (`tf.lite.Optimize.DEFAULT`): every weight
matrix stored as int8 with a float scale per output channel, multiplied in int8 against
activations quantized on the fly; layer norms, softmax and the logits' accumulation stay float32
(TFLite's post-training quantization guide). int4 is int8's conversion with every matrix of the
blocks and the output layer then stored in 4 bits, a float16 scale per 32 inputs
(`tflite_template.int4_blocks`); the embedding's lookup stays int8.

Finding a cached conversion needs no TensorFlow (its version is read from its distribution,
the code's files are hashed by path): TensorFlow is imported to convert (`core.lazy`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile

from gpt2_tf2.core import layout, lazy
from gpt2_tf2.core.hparams import INT4_BLOCK, WEIGHT_BYTES
from gpt2_tf2.errors import UserError
from gpt2_tf2.files import user_cache_dir, write_atomically

DTYPES = ("float32", "int8", "int4")
BYTES = {dtype: WEIGHT_BYTES[dtype] for dtype in DTYPES}  # per weight (int4's: BLOCK_SIZE's)
FLATBUFFER_LIMIT = 2**31  # a .tflite file holds its weights in one flatbuffer, at most 2 GB
# Sampling opens a model of more weights than this in parts (`cached_parts`): measured at 1558M
# int8, one file peaked at 3.51 GB while XNNPACK packed it (the file and the packed copy).
PART_BYTES = 512 * 2**20
# A TF checkpoint's files: prefix.index, prefix.data-00000-of-00001.
CHECKPOINT_FILE = re.compile(r"\.(index|data-\d+-of-\d+)$")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UserError(
            f"`dtype` must be float32, int8 or int4 on the tflite backend, got {dtype!r}"
        )
    return dtype


def int4_supported() -> bool:
    """Whether 4-bit blocks can be written (TFLite schema's BlockwiseQuantization: TensorFlow
    2.19 and later) and are multiplied right by the interpreter `generation.tflite` uses:
    LiteRT's (ai-edge-litert) when installed, measured right at 2.3; else TensorFlow's own,
    right from 2.21 (measured: 2.19 crashed on them, 2.20 gave wrong products). Read from the
    installed versions: no TensorFlow imported."""
    from importlib import metadata

    tensorflow = lazy.version_tuple(lazy.version())
    if tensorflow < (2, 19):
        return False
    try:
        return lazy.version_tuple(metadata.version("ai-edge-litert")) >= (2, 3)
    except metadata.PackageNotFoundError:
        return tensorflow >= (2, 21)


def check_int4(hparams) -> None:
    """int4 needs a TFLite that has it, and blocks of 32 inputs that tile every matrix:
    n_embd a multiple of 32."""
    if not int4_supported():
        raise UserError(
            f"int4 weights need TensorFlow 2.21 or later, or ai-edge-litert 2.3 or later "
            f"(this is TensorFlow {lazy.version()}); upgrade, or use int8"
        )
    if hparams.n_embd % INT4_BLOCK:
        raise UserError(
            f"int4 weights need n_embd a multiple of {INT4_BLOCK} (this model's "
            f"is {hparams.n_embd}); use int8"
        )


def weight_bytes(hparams, dtype: str, layers=None) -> int:
    """What the step's weights, or those of its part running the blocks `layers` (first, end),
    take in a .tflite file in `dtype` (a part computing logits holds its own copy of wte)."""
    layers = layers or (0, hparams.n_layer)
    shapes = layout.weight_shapes(hparams).items()
    count = sum(math.prod(s) for name, s in shapes if layout.needed(name, hparams, layers))
    return math.ceil(count * BYTES[dtype])


def check_size(hparams, dtype: str, layers=None) -> None:
    """One line, before any work, for a file whose weights do not fit a flatbuffer: a whole
    model's (`export`), or a part's (sampling: parts of PART_BYTES always fit); and int4's
    blocks of 32 that must tile the matrices."""
    if dtype == "int4":
        check_int4(hparams)
    size = weight_bytes(hparams, dtype, layers)
    if size >= FLATBUFFER_LIMIT:
        what, fix = ("this model's weights", "`dtype` int8")
        if layers is not None:  # one block alone past 2 GB: no GPT-2 release comes near
            what, fix = (f"blocks {layers[0]}-{layers[1] - 1}", "the xla backend")
        raise UserError(
            f"{what} take {size / 1e9:.1f} GB in {dtype}, past TensorFlow Lite's 2 GB per "
            f"file; use {fix}"
        )


def convert(named, hparams, dtype: str, layers=None) -> memoryview:
    """The decode step of a model with these weights (`GPT2.named_variables()`, arrays by the
    same names, or `model_dir.read_weights`; emptied as it goes) as .tflite bytes, in float32
    int8 or int4 (see the module doc). The converter sees a template whose blocks share stand-in
    weights; the real ones are written in after (`tflite_template`). `layers` (first, end): only
    that part of the step (`layout.part_layers`)."""
    check_size(hparams, dtype, layers)
    lazy.tensorflow()  # quietly, before the modules that convert import it
    from gpt2_tf2.formats import tflite_template

    weights, stand_in = tflite_template.template(named, hparams, layers)
    int4 = None
    if dtype == "int4":
        output = weights.get("model/lm_head", weights.get("model/wte"))
        last = (layers or (0, hparams.n_layer))[1] == hparams.n_layer
        int4 = {"output": output} if last else {}
    converted = "int8" if int4 is not None else dtype  # int4 starts from int8's conversion
    template = _converted(_variables(weights), hparams, converted, layers)
    del weights
    return tflite_template.fill(template, stand_in, named, hparams, layers, int4)


def _variables(weights: dict) -> dict:
    """tf.Variables for arrays by name; names holding the same array share one variable (the
    template's blocks: one stand-in constant for the converter, read by every block)."""
    tf = lazy.tensorflow()
    made = {}
    for array in weights.values():
        if id(array) not in made:
            made[id(array)] = tf.Variable(array, trainable=False)
    return {name: made[id(array)] for name, array in weights.items()}


def _converted(weights: dict, hparams, dtype: str, layers=None) -> bytes:
    """TFLite's converter on the step of these variables, through a temporary SavedModel."""
    tf = lazy.tensorflow()
    from gpt2_tf2.core import tflite_step

    module = tflite_step.step_module(weights, hparams, layers=layers)
    tmp = tempfile.mkdtemp(prefix="gpt2_tf2-tflite-")
    try:
        signature = module.decode_step.get_concrete_function()
        tf.saved_model.save(module, tmp, signatures={"serving_default": signature})
        del module, signature
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, ["serving_default"])
        if dtype == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> str:
    """Where converted steps are kept: $GPT2_TF2_TFLITE_CACHE, else ~/.cache/gpt2_tf2/tflite
    (beside the XLA cache, `cli.runner.xla_cache_dir`)."""
    if os.environ.get("GPT2_TF2_TFLITE_CACHE"):
        return os.environ["GPT2_TF2_TFLITE_CACHE"]
    return user_cache_dir("tflite")


def cache_key(model_dir, dtype: str, layers=None) -> str:
    """A name for the converted step of this model directory's current weights: it changes when
    a weight file, hparams.json, the dtype, TensorFlow or the code that writes the step
    (`core.tflite_step`, `formats.tflite_template`) do. Found without TensorFlow: the weight
    files are every checkpoint's in the directory and the `checkpoint` file that names one
    (a run's older checkpoints too: the name changes more often than needed, never less).

    Two hashes: `<dir>-<dtype>-<where>-<weights>[-h<first>-<last>].tflite`, `where` of the
    directory's path, TensorFlow's version and the code, `weights` of the weight files (their
    sizes and times) and hparams.json: a conversion of new weights supersedes the entries of
    the same `where` (`prune_superseded`)."""
    folder = model_dir.path
    files = sorted(
        name
        for name in os.listdir(folder)
        if name in ("checkpoint", "hparams.json") or CHECKPOINT_FILE.search(name)
    )
    stamp = []
    for name in files:
        st = os.stat(os.path.join(folder, name))
        stamp.append([name, st.st_size, st.st_mtime_ns])
    code = hashlib.sha256()
    for module in ("gpt2_tf2.core.tflite_step", "gpt2_tf2.formats.tflite_template"):
        with open(importlib.util.find_spec(module).origin, "rb") as f:  # what the file holds
            code.update(f.read())
    real = os.path.realpath(folder)
    where = _digest([real, lazy.version(), code.hexdigest()])
    base = os.path.basename(real) or "model"
    part = "" if layers is None else f"-h{layers[0]}-{layers[1] - 1}"
    return f"{base}-{dtype}-{where}-{_digest(stamp)}{part}.tflite"


def _digest(identity) -> str:
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


# A cached step's name (`cache_key`): what it was converted from and where it is kept.
CACHED = re.compile(
    r"^(?P<base>.+)-(?P<dtype>float32|int8|int4)-(?P<where>[0-9a-f]{16})"
    r"-(?P<weights>[0-9a-f]{16})(?P<part>-h\d+-\d+)?\.tflite$"
)


def prune_superseded(directory: str, name: str) -> None:
    """Remove from the cache the steps that the one just written as `name` supersedes: those of
    the same model directory, dtype, TensorFlow and code converted from earlier weights (a
    fine-tuning run's older checkpoints: one file each, 165 MB at 124M in int8, would
    otherwise pile up). Entries of another directory, TensorFlow or code version (another
    checkout of this package may still use them) are left, as is every file not named as an
    entry; `rm -r` of the whole cache is always safe (docs/tflite.md)."""
    new = CACHED.match(name)
    try:
        names = os.listdir(directory)
    except OSError:
        return  # the step is written: leaving the old ones is no reason to fail
    for other in names:
        old = CACHED.match(other)
        if old is None:
            continue
        same = all(old[k] == new[k] for k in ("base", "dtype", "where"))
        if same and old["weights"] != new["weights"]:  # never `name` itself: its own weights
            with contextlib.suppress(OSError):  # gone already: another process pruned it
                os.remove(os.path.join(directory, other))


@contextlib.contextmanager
def _locked(path: str):
    """Hold an exclusive lock on `path` (two processes converting the same model wait for each
    other instead of both converting)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cached_step(model_dir, dtype: str, load_weights, progress=print, layers=None) -> str:
    """The path of this model's converted step in `dtype` (or of its part running the blocks
    `layers`), converted now if not cached yet.

    `load_weights()` gives the weights by name (called only to convert); `progress(message)`
    is told about a conversion, which takes a while (about 20 seconds at 124M)."""
    check_dtype(dtype)
    check_size(model_dir.hparams, dtype, layers)
    directory = cache_dir()
    path = os.path.join(directory, cache_key(model_dir, dtype, layers))
    if os.path.isfile(path):
        return path
    try:
        os.makedirs(directory, exist_ok=True)
        with _locked(os.path.join(directory, ".lock")):
            if not os.path.isfile(path):  # another process may have converted it meanwhile
                what = "" if layers is None else f", blocks {layers[0]}-{layers[1] - 1}"
                progress(f"converting {model_dir.path} to TensorFlow Lite ({dtype}{what}), once")
                data = convert(load_weights(), model_dir.hparams, dtype, layers)
                write_atomically(path, data)
                prune_superseded(directory, os.path.basename(path))
    except OSError as e:
        raise UserError(
            f"{directory}: cannot write the converted model ({e.strerror}); "
            f"set GPT2_TF2_TFLITE_CACHE to a writable directory"
        ) from None
    return path


def cached_parts(model_dir, dtype: str, load_weights, progress=print) -> list[str]:
    """The converted step for sampling, in parts of at most about PART_BYTES of weights each
    (`layout.part_layers`; one part for most models): each part's interpreter packs its
    weights and releases its file's pages before the next is opened, so a large model never
    holds its file and XNNPACK's copy whole at once (`generation.tflite.LiteStep`)."""
    hp = model_dir.hparams
    parts = layout.part_layers(hp, math.ceil(weight_bytes(hp, dtype) / PART_BYTES))
    if len(parts) == 1:
        return [cached_step(model_dir, dtype, load_weights, progress)]
    return [cached_step(model_dir, dtype, load_weights, progress, layers) for layers in parts]


def write_export(step_path: str, model_dir, out: str) -> None:
    """Fill `out` (a new directory) with what TFLite's other bindings need: model.tflite (the
    step at `step_path`), hparams.json and the vocabulary's files (docs/tflite.md)."""
    shutil.copyfile(step_path, os.path.join(out, "model.tflite"))
    sources = dict(model_dir.vocabulary_files)
    sources["hparams.json"] = os.path.join(model_dir.path, "hparams.json")
    for name, source in sources.items():
        shutil.copyfile(source, os.path.join(out, name))
