"""OpenAI's TF1 checkpoint layout <-> the model's variables, through one explicit name table.

A release directory holds `checkpoint`, `hparams.json`, `encoder.json`, `vocab.bpe` and
`model.ckpt.{index,data-00000-of-00001,meta}`; the checkpoint maps TF1 names such as
`model/h0/attn/c_attn/w` (shape `[1, nx, 3nx]`) to float32 tensors. The downloader
(`download.py`) fetches OpenAI's releases in this layout. `name_table` is the single
source of truth for those names (a block's own, below `model/hN/`, come from `Block.params()`,
which the block's maths reads too); loading is strict: every stored variable is used exactly once
with the right shape. Saving writes the same layout, into a temporary directory renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams, save_hparams
from gpt2_tf2.errors import UserError

CKPT_NAME = "model.ckpt"
# Keys TF may add that are bookkeeping, not model variables.
_BOOKKEEPING = {"_CHECKPOINTABLE_OBJECT_GRAPH"}


def name_table(model) -> dict[str, tf.Variable]:
    """TF1 checkpoint name -> the model variable it holds. Covers every variable exactly once."""
    table = {"model/wte": model.wte, "model/wpe": model.wpe}
    for i, block in enumerate(model.h):
        table.update({f"model/h{i}/{name}": var for name, var in block.params().items()})
    table.update({"model/ln_f/g": model.ln_f.g, "model/ln_f/b": model.ln_f.b})
    used = {id(v) for v in table.values()}
    if len(used) != len(table) or used != {id(v) for v in model.variables}:
        raise AssertionError("name_table must cover each model variable exactly once")
    return table


def find_checkpoint(model_dir: str) -> str:
    """The checkpoint prefix in a model directory: what `checkpoint` names, else `model.ckpt`."""
    try:
        prefix = tf.train.latest_checkpoint(model_dir)
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"{model_dir}/checkpoint: unreadable ({_first_line(e)})") from None
    if prefix is None and os.path.exists(os.path.join(model_dir, CKPT_NAME + ".index")):
        prefix = os.path.join(model_dir, CKPT_NAME)
    if prefix is None:
        raise UserError(
            f"{model_dir}: no checkpoint found (expected {CKPT_NAME}.index and "
            f"{CKPT_NAME}.data-00000-of-00001 named by a 'checkpoint' file)"
        )
    return prefix


def _first_line(e: Exception) -> str:
    text = getattr(e, "message", None) or str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def load_openai_checkpoint(model, prefix: str) -> None:
    """Assign every variable of `model` from the TF1 checkpoint at `prefix`, strictly."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        stored = {
            k: v for k, v in reader.get_variable_to_shape_map().items() if k not in _BOOKKEEPING
        }
    except Exception as e:  # OpError, IndexError or ValueError, depending on the damage
        raise UserError(
            f"{prefix}: corrupt or unreadable checkpoint ({_first_line(e)}); "
            f"download or export it again"
        ) from None
    table = name_table(model)
    missing = sorted(set(table) - set(stored))
    extra = sorted(set(stored) - set(table))
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
    for name, var in table.items():
        want = var.shape.as_list()
        if list(stored[name]) != want:
            raise UserError(
                f"{prefix}: variable {name} has shape {list(stored[name])} but "
                f"hparams.json implies {want}; hparams.json does not match the weights"
            )
    for name, var in table.items():
        try:
            value = reader.get_tensor(name)
        except Exception as e:  # the reader raises OpError, IndexError or ValueError on damage
            raise UserError(
                f"{prefix}: corrupt or truncated checkpoint, cannot read {name} "
                f"({_first_line(e)}); download or export it again"
            ) from None
        if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
            raise UserError(
                f"{prefix}: variable {name} holds non-finite or non-float values; "
                f"the checkpoint is corrupt"
            )
        var.assign(value.astype(var.dtype.as_numpy_dtype, copy=False))


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


def write_model_dir(model, hparams: HParams, vocab_files: dict[str, str], out_dir: str) -> None:
    """Write `model` as an OpenAI-layout model directory, atomically.

    Args:
      model: a `GPT2`.
      hparams: its hyperparameters (written as hparams.json).
      vocab_files: the vocabulary's files by name ({"encoder.json": path, "vocab.bpe": path},
        `tokenizer.vocabulary_files(model_dir)`) to copy beside the weights.
      out_dir: the directory to create or replace; it appears complete or not at all.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        table = name_table(model)
        names = sorted(table)
        tf.raw_ops.SaveV2(
            prefix=os.path.join(tmp, CKPT_NAME),
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.convert_to_tensor(table[n]) for n in names],
        )
        _write_meta_graph(table, os.path.join(tmp, CKPT_NAME + ".meta"))
        with open(os.path.join(tmp, "checkpoint"), "w", encoding="utf-8") as f:
            f.write(
                f'model_checkpoint_path: "{CKPT_NAME}"\nall_model_checkpoint_paths: "{CKPT_NAME}"\n'
            )
        save_hparams(hparams, os.path.join(tmp, "hparams.json"))
        for fname, path in vocab_files.items():
            shutil.copyfile(path, os.path.join(tmp, fname))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: str, target: str) -> None:
    """Move `new` to `target`; an existing target is kept aside until the new one is in place."""
    if not os.path.exists(target):
        os.replace(new, target)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
