"""OpenAI checkpoint layout: strict mapping, round trip, damaged files, TF1 readability."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_random_model
from gpt2_tf2 import api
from gpt2_tf2.core import kernels
from gpt2_tf2.core.hparams import HParams, load_hparams
from gpt2_tf2.core.model import GPT2
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats.download import FILES
from gpt2_tf2.formats.openai import find_checkpoint, load_openai_checkpoint, name_table

RELEASE_FILES = set(FILES)  # the seven files of an OpenAI release


def test_name_table_covers_every_variable_once():
    hp = HParams(n_vocab=50, n_ctx=8, n_embd=8, n_head=2, n_layer=3)
    model = GPT2(hp, seed=None)
    table = name_table(model)
    assert len(table) == 2 + 3 * 12 + 2 == len(model.variables)
    assert {id(v) for v in table.values()} == {id(v) for v in model.variables}
    assert all(v.name.split(":")[0] == n for n, v in table.items())


@pytest.mark.parametrize("transposed", [True, False])  # load()'s choice by CPU, both ways
def test_layout_and_round_trip(tmp_path, vocab_files, monkeypatch, transposed):
    monkeypatch.setattr(kernels, "transposed_weights_faster", lambda: transposed)
    model = write_random_model(tmp_path / "m", vocab_files, seed=11)
    # OpenAI's seven files, and the hidden marker that lets a later export replace them.
    assert set(os.listdir(tmp_path / "m")) == RELEASE_FILES | {".gpt2_tf2.json"}
    reader = tf.train.load_checkpoint(str(tmp_path / "m" / "model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    assert shapes["model/h1/attn/c_attn/w"] == [1, 32, 96]
    assert set(shapes) == set(name_table(model))
    loaded = api.load(str(tmp_path / "m"))
    # load() keeps the conv1d weights as [nf, nx] where that decodes faster (GPT2.as_loaded):
    # compared back in OpenAI's layout, every stored tensor exactly once.
    assert loaded.model.transposed == transposed
    m = loaded.model
    values = {
        "model/wte": m.wte,
        "model/wpe": m.wpe,
        "model/ln_f/g": m.ln_f.g,
        "model/ln_f/b": m.ln_f.b,
    }
    for i, block in enumerate(m.h):
        for key, var in block.params().items():
            values[f"model/h{i}/{key}"] = var
    compared = set()
    for name, var in values.items():
        value = var.numpy()
        if name.endswith("/w_t"):
            name, value = name[: -len("_t")], value.T[None]
        assert np.array_equal(value, reader.get_tensor(name)), name
        compared.add(name)
    assert compared == set(shapes) and len(values) == len(m.variables)
    tokens = tf.constant([[464, 2068, 7586]], tf.int32)
    model.as_loaded()  # the written model kept as load() keeps it: the same kernels
    assert np.max(np.abs(loaded.model(tokens)["logits"] - model(tokens)["logits"])) == 0


def test_readable_by_tf1_saver(tiny_model_dir):
    """A TF1 program (graph mode, import_meta_graph + Saver.restore) reads what we write."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        saver = tf.compat.v1.train.import_meta_graph(
            os.path.join(tiny_model_dir, "model.ckpt.meta")
        )
        saver.restore(sess, tf.train.latest_checkpoint(tiny_model_dir))
        wte = sess.run(tf.compat.v1.get_default_graph().get_tensor_by_name("model/wte:0"))
    reader = tf.train.load_checkpoint(os.path.join(tiny_model_dir, "model.ckpt"))
    assert np.array_equal(wte, reader.get_tensor("model/wte"))


def _rewrite(path, transform):
    """Rewrite the checkpoint at `path` with tensors {name: value} transformed."""
    reader = tf.train.load_checkpoint(str(path / "model.ckpt"))
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    tensors = transform(tensors)
    for f in path.glob("model.ckpt.*"):
        if not f.name.endswith(".meta"):
            f.unlink()
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(path / "model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tensors[n] for n in names],
    )


def _load(path):
    hp = load_hparams(str(path))
    load_openai_checkpoint(GPT2(hp, seed=None), find_checkpoint(str(path)))


def test_missing_variable(model_copy):
    _rewrite(model_copy, lambda t: {k: v for k, v in t.items() if k != "model/h1/mlp/c_fc/b"})
    with pytest.raises(UserError, match="lacks variable model/h1/mlp/c_fc/b"):
        _load(model_copy)


def test_extra_variable(model_copy):
    _rewrite(model_copy, lambda t: {**t, "model/h2/ln_1/g": np.ones(32, np.float32)})
    with pytest.raises(UserError, match="unexpected variable model/h2/ln_1/g"):
        _load(model_copy)


def test_misshaped_variable(model_copy):
    _rewrite(model_copy, lambda t: {**t, "model/h0/attn/c_attn/w": np.zeros((32, 96), np.float32)})
    with pytest.raises(UserError, match=r"model/h0/attn/c_attn/w has shape \[32, 96\]"):
        _load(model_copy)


def test_hparams_not_matching_weights(model_copy):
    hp = json.loads((model_copy / "hparams.json").read_text())
    hp["n_embd"], hp["n_head"] = 64, 4
    (model_copy / "hparams.json").write_text(json.dumps(hp))
    with pytest.raises(UserError, match="hparams.json does not match"):
        _load(model_copy)


def test_truncated_data_file(model_copy):
    data = model_copy / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt"):
        _load(model_copy)


def test_corrupt_index(model_copy):
    (model_copy / "model.ckpt.index").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt"):
        _load(model_copy)


def test_no_checkpoint(model_copy):
    for f in model_copy.glob("model.ckpt.*"):
        f.unlink()
    (model_copy / "checkpoint").unlink()
    with pytest.raises(UserError, match="no checkpoint"):
        _load(model_copy)


def test_save_replaces_atomically(tmp_path, vocab_files, monkeypatch):
    """A failed save leaves the previous directory untouched and no half-written one."""
    from gpt2_tf2.formats import openai as checkpoint

    write_random_model(tmp_path / "m", vocab_files, seed=1)
    before = {f: (tmp_path / "m" / f).read_bytes() for f in RELEASE_FILES}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_hparams", fail)
    message = r"cannot write the model .disk full.; about [\d.]+ MB needed; files already there"
    with pytest.raises(UserError, match=message):
        write_random_model(tmp_path / "m", vocab_files, seed=2)
    assert {f: (tmp_path / "m" / f).read_bytes() for f in RELEASE_FILES} == before
    assert os.listdir(tmp_path) == ["m"]
