"""A model from scratch: `init` writes GPT-2's initialisation on one's own vocabulary, and every
command (encode, train, sample, score) works on it, with a BPE or a SentencePiece vocabulary.
The commands run through their entry points in this process: their work is the subject."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_in_process
from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.core.init import initialize
from gpt2_tf2.core.model import GPT2
from gpt2_tf2.tokenizer import train as training

TEXT = (
    "the cat sat on the mat. the dog sat on the log. кошка сидела на окне. собака лежала у двери. "
) * 60


def test_gpt2_initialisation():
    """Normal 0.02 everywhere, 0.01 for positions (as OpenAI's code), residual projections
    0.02 / sqrt(2 * n_layer) (the GPT-2 paper, sec. 2.3), zero biases, unit gains."""
    hp = HParams(n_vocab=3000, n_ctx=512, n_embd=256, n_head=4, n_layer=8)
    model = GPT2(hp, seed=None)
    initialize(model, seed=7)
    scaled = 0.02 / math.sqrt(16)
    for name, var in model.named_variables().items():
        value = var.numpy()
        if name.endswith("/g"):
            assert np.all(value == 1), name
        elif name.endswith("/b"):
            assert np.all(value == 0), name
        else:
            want = {"model/wpe": 0.01}.get(name, scaled if "c_proj/w" in name else 0.02)
            assert abs(value.std() - want) < 0.03 * want, (name, value.std(), want)
            assert abs(value.mean()) < 0.05 * want, name
    again = GPT2(hp, seed=None)
    initialize(again, seed=7)
    for a, b in zip(model.variables, again.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def vocab(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    (tmp / "corpus.txt").write_text(TEXT, encoding="utf-8")
    training.train([str(tmp / "corpus.txt")], str(tmp / "vocab"), 300, kind=request.param)
    return tmp


@pytest.mark.e2e
def test_init_trains_and_every_command_works(vocab):
    tmp = vocab
    model = tmp / "model"
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.init",
            "--vocab",
            str(tmp / "vocab"),
            "--out",
            str(model),
            "--n_layer",
            "2",
            "--n_embd",
            "64",
            "--n_head",
            "4",
            "--n_ctx",
            "64",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "2 layers" in done.stdout
    n_vocab = json.loads((model / "hparams.json").read_text())["n_vocab"]
    assert sorted(os.listdir(tmp / "vocab"))[0] in os.listdir(model)  # the vocabulary travels
    # Never over anything: not even the model it just wrote.
    again = run_in_process(
        ["-m", "gpt2_tf2.init", "--vocab", str(tmp / "vocab"), "--out", str(model)]
    )
    assert again.returncode == 2 and "not empty" in again.stderr
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.encode",
            str(tmp / "corpus.txt"),
            str(tmp / "data.npz"),
            "--model_name",
            str(model),
        ]
    )
    assert done.returncode == 0, done.stderr
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.train",
            "--model_name",
            str(model),
            "--dataset",
            str(tmp / "data.npz"),
            "--run_name",
            "r",
            "--checkpoint_dir",
            str(tmp / "ckpt"),
            "--steps",
            "40",
            "--batch_size",
            "4",
            "--sequence_length",
            "32",
            "--learning_rate",
            "0.003",
            "--optimizer",
            "adamw",
            "--sample_every",
            "0",
            "--seed",
            "1",
            "--offline",
        ],
    )
    assert done.returncode == 0, done.stderr
    losses = [
        float(line.split("\t")[1])
        for line in (tmp / "ckpt" / "r" / "log.tsv").read_text().splitlines()
    ]
    assert losses[0] > math.log(n_vocab) - 0.3  # starts near uniform guessing
    assert np.mean(losses[-5:]) < math.log(n_vocab) - 1.5, losses
    exported = tmp / "trained"
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.export",
            "--run_name",
            "r",
            "--checkpoint_dir",
            str(tmp / "ckpt"),
            "--out",
            str(exported),
        ]
    )
    assert done.returncode == 0, done.stderr
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.sample",
            "--model_name",
            str(exported),
            "--prompt",
            "the cat",
            "--length",
            "12",
            "--seed",
            "3",
            "--temperature",
            "0",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "SAMPLE 1" in done.stdout and ("sat" in done.stdout or "the" in done.stdout)
    scored = {}
    for name in (model, exported):
        done = run_in_process(
            ["-m", "gpt2_tf2.score", str(tmp / "corpus.txt"), "--model_name", str(name), "--json"]
        )
        assert done.returncode == 0, done.stderr
        scored[name] = json.loads(done.stdout)["nll"]
    assert scored[exported] < scored[model] - 1.5


@pytest.mark.e2e
def test_float16_export_loads_as_float32(tmp_path, tiny_model_dir):
    """`export --dtype float16` (how the demo model stays small): half the bytes, the same model
    to within float16's rounding."""
    from gpt2_tf2.formats.model_dir import load_model_dir

    run = tmp_path / "ckpt" / "r"
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.train",
            "--model_name",
            tiny_model_dir,
            "--dataset",
            str(tmp_path / "text.txt"),
            "--run_name",
            "r",
            "--checkpoint_dir",
            str(tmp_path / "ckpt"),
            "--steps",
            "1",
            "--sample_every",
            "0",
            "--offline",
        ]
    )
    assert done.returncode == 0, done.stderr
    for dtype in ("float32", "float16"):
        done = run_in_process(
            [
                "-m",
                "gpt2_tf2.export",
                "--run_name",
                "r",
                "--checkpoint_dir",
                str(tmp_path / "ckpt"),
                "--out",
                str(tmp_path / dtype),
                "--dtype",
                dtype,
            ]
        )
        assert done.returncode == 0, done.stderr
    size = {
        d: os.path.getsize(tmp_path / d / "model.ckpt.data-00000-of-00001")
        for d in ("float32", "float16")
    }
    assert size["float16"] < 0.55 * size["float32"]
    reader = tf.train.load_checkpoint(str(tmp_path / "float16" / "model.ckpt"))
    assert reader.get_variable_to_dtype_map()["model/wte"] == tf.float16
    _, full = load_model_dir(str(tmp_path / "float32"))
    _, half = load_model_dir(str(tmp_path / "float16"))
    tokens = tf.constant([[1, 2, 3, 4, 5]])
    a, b = full(tokens)["logits"].numpy(), half(tokens)["logits"].numpy()
    assert half.wte.dtype == tf.float32
    assert np.max(np.abs(a - b)) < 0.05
    bad = run_in_process(
        [
            "-m",
            "gpt2_tf2.export",
            "--run_name",
            "r",
            "--checkpoint_dir",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "x"),
            "--dtype",
            "int4",
        ]
    )
    assert bad.returncode == 2 and "--dtype" in bad.stderr
    assert run.exists()
