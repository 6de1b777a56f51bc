"""OpenAI's TF1 checkpoint layout <-> the model's variables, through one explicit name table.

A release directory holds `checkpoint`, `hparams.json`, `encoder.json`, `vocab.bpe` and
`model.ckpt.{index,data-00000-of-00001,meta}`; the checkpoint maps TF1 names such as
`model/h0/attn/c_attn/w` (shape `[1, nx, 3nx]`) to float32 tensors. The downloader
(`download.py`) fetches OpenAI's releases in this layout. `name_table` is the single
source of truth for those names (a block's own, below `model/hN/`, come from `Block.params()`,
which the block's maths reads too; `core.layout.weight_shapes` spells the same names and shapes
without building a model, for reading a checkpoint one weight at a time, and a test keeps the two
equal);
loading is strict: every stored variable is used exactly once with the right shape. Saving writes
the same layout, and never removes a file it did not write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams, save_hparams
from gpt2_tf2.core.layout import weight_shapes  # noqa: F401 (openai.weight_shapes: its name before)
from gpt2_tf2.errors import UserError, first_line, reason
from gpt2_tf2.files import human_size, write_atomically

CKPT_NAME = "model.ckpt"
# Keys TF may add that are bookkeeping, not model variables.
_BOOKKEEPING = {"_CHECKPOINTABLE_OBJECT_GRAPH"}


def name_table(model) -> dict[str, tf.Variable]:
    """TF1 checkpoint name -> the model variable it holds. Covers every variable exactly once."""
    table = model.named_variables()
    used = {id(v) for v in table.values()}
    if len(used) != len(table) or used != {id(v) for v in model.variables}:
        raise AssertionError("name_table must cover each model variable exactly once")
    return table


def find_checkpoint(model_dir: str) -> str:
    """The checkpoint prefix in a model directory: what `checkpoint` names, else `model.ckpt`."""
    prefix = named_checkpoint(model_dir)
    if prefix is None and os.path.exists(os.path.join(model_dir, CKPT_NAME + ".index")):
        prefix = os.path.join(model_dir, CKPT_NAME)
    if prefix is None:
        raise UserError(
            f"{model_dir}: no checkpoint found (expected {CKPT_NAME}.index and "
            f"{CKPT_NAME}.data-00000-of-00001 named by a 'checkpoint' file)"
        )
    return prefix


def named_checkpoint(directory: str) -> str | None:
    """The prefix the directory's `checkpoint` file names, if its index file is there.

    Read with `get_checkpoint_state`, not `tf.train.latest_checkpoint`, which logs a TensorFlow
    `ERROR:` line of its own when the named files are missing.
    """
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{directory}/checkpoint: unreadable ({first_line(e)})") from None
    prefix = state.model_checkpoint_path if state is not None else ""
    return prefix if prefix and os.path.exists(prefix + ".index") else None


def open_checkpoint(prefix: str, shapes: dict[str, list[int]]):
    """A reader of the TF1 checkpoint at `prefix`, checked to hold exactly the variables
    `shapes` names, in those shapes."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        stored = {
            k: v for k, v in reader.get_variable_to_shape_map().items() if k not in _BOOKKEEPING
        }
    except Exception as e:  # OpError, IndexError or ValueError, depending on the damage
        raise UserError(
            f"{prefix}: corrupt or unreadable checkpoint ({first_line(e)}); "
            f"download or export it again"
        ) from None
    missing = sorted(set(shapes) - set(stored))
    extra = sorted(set(stored) - set(shapes))
    if missing:
        raise UserError(
            f"{prefix}: checkpoint lacks variable {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
            f"does hparams.json (n_layer) match these weights?"
        )
    if extra:
        raise UserError(
            f"{prefix}: checkpoint has unexpected variable {extra[0]}"
            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}; "
            f"does hparams.json (n_layer) match these weights?"
        )
    for name, want in shapes.items():
        if list(stored[name]) != list(want):
            raise UserError(
                f"{prefix}: variable {name} has shape {list(stored[name])} but "
                f"hparams.json implies {list(want)}; hparams.json does not match the weights"
            )
    return reader


def read_tensor(reader, prefix: str, name: str) -> np.ndarray:
    """One variable from an `open_checkpoint` reader, checked to be finite floats."""
    try:
        value = reader.get_tensor(name)
    except Exception as e:  # the reader raises OpError, IndexError or ValueError on damage
        raise UserError(
            f"{prefix}: corrupt or truncated checkpoint, cannot read {name} "
            f"({first_line(e)}); download or export it again"
        ) from None
    if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
        raise UserError(
            f"{prefix}: variable {name} holds non-finite or non-float values; "
            f"the checkpoint is corrupt"
        )
    return value


def load_openai_checkpoint(model, prefix: str) -> None:
    """Assign every variable of `model` from the TF1 checkpoint at `prefix`, strictly."""
    table = name_table(model)
    reader = open_checkpoint(prefix, {name: var.shape.as_list() for name, var in table.items()})
    for name, var in table.items():
        value = read_tensor(reader, prefix, name)
        var.assign(value.astype(var.dtype.as_numpy_dtype, copy=False))


class CheckpointWeights:
    """The weights of a TF1 checkpoint by name, each read when taken (`pop` forgets it): what
    a conversion needs one weight at a time, without the whole model in memory."""

    def __init__(self, prefix: str, hp: HParams):
        self._prefix = prefix
        self._reader = open_checkpoint(prefix, weight_shapes(hp))
        self._names = set(weight_shapes(hp))

    def __iter__(self):
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._names

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return read_tensor(self._reader, self._prefix, name)

    def pop(self, name: str) -> np.ndarray:
        value = self[name]
        self._names.remove(name)
        return value


def _write_meta_graph(table: dict[str, tf.Variable], path: str) -> None:
    """A TF1 MetaGraphDef with the variables and a Saver, like the `.meta` OpenAI ships.

    Tools that call `tf.compat.v1.train.import_meta_graph` + `restore` find every variable.
    """
    with tf.Graph().as_default():
        var_list = {
            name: tf.compat.v1.get_variable(
                name,
                shape=v.shape,
                dtype=v.dtype,
                initializer=tf.compat.v1.zeros_initializer(),
                use_resource=False,
            )  # TF1 ref variables, as OpenAI's
            for name, v in table.items()
        }
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        saver.export_meta_graph(path)


# Which files of a model directory gpt2_tf2 wrote: only those may be replaced by a later export.
MARKER = ".gpt2_tf2.json"
TMP_PREFIX = ".gpt2_tf2-tmp-"  # our temporary directories inside a model directory


def check_target(out_dir: str, writer: str = "write_model_dir") -> None:
    """Refuse a target that holds anything this package did not write (one line saying what).

    A new or empty directory is fine, and so is one the same `writer` wrote before (an earlier
    export): its marker names the writer and lists the files it wrote, and nothing else may be
    there. A model that `init` or `convert` wrote is no export's to replace.
    """
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory; choose a new `out`")
    entries = sorted(e for e in os.listdir(out_dir) if not e.startswith(TMP_PREFIX))
    ours = set(_written_by_us(out_dir))
    foreign = [e for e in entries if e != MARKER and e not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise UserError(
            f"{out_dir}: not empty and not a model directory written by gpt2_tf2 (it holds "
            f"{shown}); nothing was changed: choose a new or empty directory for `out`"
        )
    marker = _read_marker(out_dir)
    if entries and marker.get("command") != writer:
        by = marker.get("command")
        by = f"gpt2_tf2 {by}" if isinstance(by, str) else "a gpt2_tf2 that did not record how"
        raise UserError(
            f"{out_dir}: holds a model written by {by}, not by an earlier {writer}; nothing was "
            f"changed: choose a new or empty directory for `out`"
        )


def _read_marker(out_dir: str) -> dict:
    try:
        with open(os.path.join(out_dir, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _written_by_us(out_dir: str) -> list[str]:
    files = _read_marker(out_dir).get("files")
    files = files if isinstance(files, list) else []
    return [f for f in files if isinstance(f, str) and os.path.basename(f) == f]


def _remove_stale_temporaries(out_dir: str) -> None:
    """Temporary directories a killed export left inside `out_dir` (ours by their prefix)."""
    for entry in os.listdir(out_dir):
        path = os.path.join(out_dir, entry)
        if entry.startswith(TMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.startswith(TMP_PREFIX):
            os.remove(path)


def write_model_dir(
    model,
    hparams: HParams,
    vocab_files: dict[str, str],
    out_dir: str,
    writer: str = "write_model_dir",
) -> None:
    """Write `model` as an OpenAI-layout model directory; never removes what it did not write.

    `out_dir` must be new, empty, or a model directory written here before (`check_target`).
    Every file is written to a temporary directory inside it first, then moved into place one
    by one with an atomic rename, the `checkpoint` index last: a reader sees each file whole,
    and a failure before the moves leaves the earlier files as they were.

    Args:
      model: a `GPT2`.
      hparams: its hyperparameters (written as hparams.json).
      vocab_files: the vocabulary's files by name ({"encoder.json": path, "vocab.bpe": path},
        `tokenizer.vocabulary_files(model_dir)`) to copy beside the weights.
      out_dir: the directory to write.
      writer: what writes it (a command's name: `export`, `init`), recorded in the marker; only
        the same writer may replace the directory's files later.
    """
    out_dir = os.path.abspath(out_dir)
    check_target(out_dir, writer)
    created = not os.path.exists(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)  # with the usual permissions (0755 under umask 022)
        _remove_stale_temporaries(out_dir)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_dir)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot create the directory ({e.strerror})") from None
    try:
        names = _write_files(model, hparams, vocab_files, tmp)
        _write_marker(out_dir, names, writer)  # first: a directory cut short is still known as ours
        for name in sorted(names, key=lambda n: n == "checkpoint"):  # the index last
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    except (OSError, tf.errors.OpError) as e:
        needed = sum(v.shape.num_elements() * v.dtype.size for v in model.variables)
        raise UserError(
            f"{out_dir}: cannot write the model ({reason(e)}); about {human_size(needed)} "
            f"needed; files already there were not replaced; free space or choose another `out`"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and os.listdir(out_dir) in ([], [MARKER]):
            shutil.rmtree(out_dir, ignore_errors=True)


def _write_files(model, hparams: HParams, vocab_files: dict[str, str], directory: str) -> list:
    """The model directory's files, written into `directory`; returns their names."""
    table = name_table(model)
    names = sorted(table)
    tf.raw_ops.SaveV2(
        prefix=os.path.join(directory, CKPT_NAME),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.convert_to_tensor(table[n]) for n in names],
    )
    _write_meta_graph(table, os.path.join(directory, CKPT_NAME + ".meta"))
    with open(os.path.join(directory, "checkpoint"), "w", encoding="utf-8") as f:
        f.write(
            f'model_checkpoint_path: "{CKPT_NAME}"\nall_model_checkpoint_paths: "{CKPT_NAME}"\n'
        )
    save_hparams(hparams, os.path.join(directory, "hparams.json"))
    for fname, path in vocab_files.items():
        shutil.copyfile(path, os.path.join(directory, fname))
    return sorted(os.listdir(directory))


def _write_marker(out_dir: str, names: list[str], writer: str) -> None:
    """The marker, written whole (a temporary file renamed into place)."""
    files = sorted(set(names) | set(_written_by_us(out_dir)))
    text = json.dumps({"written_by": "gpt2_tf2", "command": writer, "files": files}, indent=2)
    tmp = os.path.join(out_dir, f"{TMP_PREFIX}{MARKER}")  # what _remove_stale_temporaries knows
    write_atomically(os.path.join(out_dir, MARKER), text, tmp)
