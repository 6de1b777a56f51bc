"""`convert from-hf` / `to-hf` without transformers: Hugging Face directories written here by
hand (config.json, safetensors in transformers' names, vocab.json + merges.txt or
tokenizer.json), converted, used, converted back; each malformed input is one line.
transformers itself is the reference in tests/test_reference_hf.py."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import threading

import numpy as np
import pytest

from conftest import run_cli, run_in_process
from gpt2_tf2.errors import UserError

safetensors_numpy = pytest.importorskip("safetensors.numpy")  # requirements-test.txt

SHAPE = dict(n_embd=32, n_head=4, n_layer=2, n_positions=96)


def hf_state(vocab_size: int, seed: int = 0, n_embd=32, n_layer=2, n_positions=96, **_) -> dict:
    """Random tensors under transformers' GPT2LMHeadModel names (Conv1D weights [nx, nf])."""
    rng = np.random.default_rng(seed)
    e = n_embd

    def r(*shape):
        return rng.normal(0, 0.1, shape).astype(np.float32)

    state = {
        "transformer.wte.weight": r(vocab_size, e),
        "transformer.wpe.weight": r(n_positions, e),
    }
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            state[p + ln + ".weight"], state[p + ln + ".bias"] = 1 + r(e), r(e)
        for name, nx, nf in (
            ("attn.c_attn", e, 3 * e),
            ("attn.c_proj", e, e),
            ("mlp.c_fc", e, 4 * e),
            ("mlp.c_proj", 4 * e, e),
        ):
            state[p + name + ".weight"], state[p + name + ".bias"] = r(nx, nf), r(nf)
    state["transformer.ln_f.weight"], state["transformer.ln_f.bias"] = 1 + r(e), r(e)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def write_hf(path, vocab_files, state=None, config=None, tokenizer="files", extra=None):
    """A Hugging Face directory with GPT-2's vocabulary (vocab.json + merges.txt, or
    tokenizer.json as transformers 5 writes it)."""
    path.mkdir(parents=True)
    with open(vocab_files["encoder.json"], encoding="utf-8") as f:
        vocab = json.load(f)
    config = {"model_type": "gpt2", "vocab_size": len(vocab), **SHAPE, **(config or {})}
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = hf_state(config["vocab_size"], **SHAPE) if state is None else state
    safetensors_numpy.save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer == "files":
        shutil.copyfile(vocab_files["encoder.json"], path / "vocab.json")
        shutil.copyfile(vocab_files["vocab.bpe"], path / "merges.txt")
    elif tokenizer == "json":
        with open(vocab_files["vocab.bpe"], encoding="utf-8") as f:
            merges = [line for line in f.read().splitlines()[1:] if line]
        eot = vocab["<|endoftext|>"]
        data = {
            "added_tokens": [{"id": eot, "content": "<|endoftext|>", "special": True}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
            "model": {"type": "BPE", "vocab": vocab, "merges": [m.split(" ") for m in merges]},
        }
        (path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    for name, content in (extra or {}).items():
        (path / name).write_text(json.dumps(content), encoding="utf-8")
    return state


def convert(*args):
    return run_in_process(["-m", "gpt2_tf2.convert", *map(str, args)])


@pytest.mark.parametrize("tokenizer", ["files", "json"])
def test_from_hf_and_back_keeps_every_tensor_and_the_vocabulary(vocab_files, tmp_path, tokenizer):
    state = write_hf(tmp_path / "hf", vocab_files, tokenizer=tokenizer)
    r = convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    assert r.returncode == 0, r.stderr
    assert "end of text '<|endoftext|>'" in r.stdout
    # OpenAI's layout: hparams with the five keys, GPT-2's vocabulary files byte for byte.
    hp = json.loads((tmp_path / "ours" / "hparams.json").read_text())
    assert hp == {"n_vocab": 50257, "n_ctx": 96, "n_embd": 32, "n_head": 4, "n_layer": 2}
    for name in ("encoder.json",):
        with open(vocab_files[name], encoding="utf-8") as f:
            assert json.loads((tmp_path / "ours" / name).read_text()) == json.load(f)
    assert not (tmp_path / "ours" / "special_tokens.json").exists()
    r = convert("to-hf", tmp_path / "ours", "--out", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    back = safetensors_numpy.load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(state) - {"lm_head.weight"}  # tied: transformers restores it
    assert max(float(np.max(np.abs(back[k] - state[k]))) for k in back) == 0.0
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (config["n_positions"], config["vocab_size"], config["eos_token_id"]) == (
        96,
        50257,
        50256,
    )
    assert config["n_ctx"] == 96  # as GPT-2's own config.json: llama.cpp's converter reads it
    gen = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 50256


@pytest.mark.parametrize("tied", [True, False])
def test_to_hf_writes_the_safetensors_file_a_weight_at_a_time(tmp_path, tied):
    """`huggingface.SafetensorsFile` (to-hf's weights) takes each weight once, just before it
    writes it (the bytes before it are in the file when it is taken), so no more than one is
    held; here from a run's variables (the round trips above read a checkpoint). The file is
    what the safetensors package reads, every tensor equal, its size the one said before."""
    import tensorflow as tf

    from gpt2_tf2.core.hparams import HParams
    from gpt2_tf2.formats import huggingface, openai

    hp = HParams(n_vocab=40, n_ctx=8, n_embd=16, n_head=2, n_layer=2, tie_word_embeddings=tied)
    rng = np.random.default_rng(0)
    values = {
        n: rng.standard_normal(shape, np.float32) for n, shape in openai.weight_shapes(hp).items()
    }
    names = huggingface.hf_names(hp.n_layer, tied)
    hf_of = {ours: hf for hf, ours in names.items()}

    class OneAtATime(dict):  # a run's variables (tf.Variable), each to be handed over once
        taken, out, file = (), None, None

        def pop(self, name):
            assert name not in self.taken, f"{name} taken twice"
            begin = self.file.header[hf_of[name]]["data_offsets"][0]
            assert self.out.tell() == 8 + len(self.file.head) + begin, f"{name} taken early"
            self.taken = (*self.taken, name)
            return super().pop(name)

    weights = OneAtATime({n: tf.Variable(v) for n, v in values.items()})
    weights.file = huggingface.SafetensorsFile(weights, hp)
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as weights.out:
        weights.file.write(weights.out)
    assert sorted(weights.taken) == sorted(values) and not weights  # each taken once, all
    assert path.stat().st_size == weights.file.size
    back = safetensors_numpy.load_file(str(path))
    assert set(back) == set(names) and ("lm_head.weight" in back) != tied
    for hf, ours in names.items():
        want = (
            values[ours].reshape(values[ours].shape[-2:]) if ours.endswith("/w") else values[ours]
        )
        assert np.array_equal(back[hf], want), hf
    # A weight of another shape than the header says is an error, not a file that lies.
    wrong = dict(values, **{"model/wpe": values["model/wpe"][:-1]})
    with pytest.raises(UserError, match=r"model/wpe: shape \[7, 16\], not this model's"):
        huggingface.SafetensorsFile(wrong, hp).write(io.BytesIO())


def test_a_converted_model_samples_and_matches_a_numpy_forward(vocab_files, tmp_path):
    """The converted weights in our model give the logits of GPT-2's maths written in NumPy
    on transformers' tensors (an independent reading of the mapping)."""
    import gpt2_tf2

    state = write_hf(tmp_path / "hf", vocab_files)
    assert convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours").returncode == 0
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    ids = lm.encoder.encode("Hello there, friend.")
    ours = lm.model(np.array([ids], np.int32))["logits"].numpy()[0]
    diff = float(np.max(np.abs(ours - numpy_gpt2(state, ids, n_head=4))))
    assert diff <= 1e-4, diff
    r = run_in_process(
        ["-m", "gpt2_tf2.sample", "--model_name", str(tmp_path / "ours"), "--prompt", "Hi"]
        + ["--length", "5", "--seed", "1"]
    )
    assert r.returncode == 0 and "SAMPLE 1" in r.stdout, r.stderr


def test_an_untied_output_layer_converts_and_goes_back(vocab_files, tmp_path):
    """tie_word_embeddings false: lm_head.weight is a layer of its own (model/lm_head); the
    logits use it, hparams.json records it, training updates it, and to-hf writes it back."""
    import gpt2_tf2

    state = hf_state(50257, seed=3, **SHAPE)
    state["lm_head.weight"] = hf_state(50257, seed=4, **SHAPE)["transformer.wte.weight"]
    write_hf(tmp_path / "hf", vocab_files, state, config={"tie_word_embeddings": False})
    r = convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    assert r.returncode == 0, r.stderr
    hp = json.loads((tmp_path / "ours" / "hparams.json").read_text())
    assert hp["tie_word_embeddings"] is False
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    assert lm.hparams.num_params() == sum(v.size for v in state.values())
    ids = lm.encoder.encode("Hello there, friend.")
    ours = lm.model(np.array([ids], np.int32))["logits"].numpy()[0]
    diff = float(np.max(np.abs(ours - numpy_gpt2(state, ids, n_head=4))))
    assert diff <= 1e-4, diff
    # The compiled decoding loop reads the weights once (read_weights): greedy there equals
    # the argmax of full forward passes.
    (greedy,) = lm.generate_tokens(ids, length=4, temperature=0)
    full = list(ids)
    for _ in range(4):
        logits = lm.model(np.array([full], np.int32))["logits"].numpy()[0, -1]
        full.append(int(np.argmax(logits)))
    assert list(greedy[0]) == full[len(ids) :]
    r = convert("to-hf", tmp_path / "ours", "--out", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    back = safetensors_numpy.load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(state)
    assert max(float(np.max(np.abs(back[k] - state[k]))) for k in back) == 0.0
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False


def numpy_gpt2(s, ids, n_head):
    """GPT-2's forward pass (Radford et al. 2019) in NumPy on a transformers state dict."""

    def ln(x, p):
        u = x.mean(-1, keepdims=True)
        v = ((x - u) ** 2).mean(-1, keepdims=True)
        return (x - u) / np.sqrt(v + 1e-5) * s[p + ".weight"] + s[p + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    def lin(x, p):
        return x @ s[p + ".weight"] + s[p + ".bias"]

    t = len(ids)
    x = s["transformer.wte.weight"][ids] + s["transformer.wpe.weight"][:t]
    layers = len({k.split(".")[2] for k in s if k.startswith("transformer.h.")})
    for i in range(layers):
        p = f"transformer.h.{i}."
        q, k, v = np.split(lin(ln(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
        d = q.shape[-1] // n_head
        q, k, v = (m.reshape(t, n_head, d).transpose(1, 0, 2) for m in (q, k, v))  # [h, t, d]
        w = q @ k.transpose(0, 2, 1) / np.sqrt(d) + np.triu(np.full((t, t), -1e10), 1)
        w = np.exp(w - w.max(-1, keepdims=True))
        a = (w / w.sum(-1, keepdims=True)) @ v  # [h, t, d]
        x = x + lin(a.transpose(1, 0, 2).reshape(t, -1), p + "attn.c_proj")
        x = x + lin(gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ s["lm_head.weight"].T  # tied: the same array as wte


def test_special_tokens_and_their_end_of_text_come_along(vocab_files, tmp_path):
    """ruGPT-3's way: added special tokens, </s> ends a text. The model directory carries them
    (special_tokens.json); the encoder's end-of-text is </s>; to-hf writes them back."""
    added = {"<pad>": 50257, "<s>": 50258, "</s>": 50259}
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    write_hf(
        tmp_path / "hf",
        vocab_files,
        config={"vocab_size": 50260},
        extra={"added_tokens.json": added, "special_tokens_map.json": special_map},
    )
    r = convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    assert r.returncode == 0, r.stderr
    from gpt2_tf2.tokenizer import load_encoder

    enc = load_encoder(str(tmp_path / "ours"))
    assert enc.n_vocab == 50260 and enc.eot_token == 50259
    assert enc.encode("a</s>b", allowed_special="all") == enc.encode("a") + [50259] + enc.encode(
        "b"
    )
    r = convert("to-hf", tmp_path / "ours", "--out", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    back = json.loads((tmp_path / "back" / "special_tokens_map.json").read_text())
    assert back["eos_token"] == "</s>" and back["pad_token"] == "<pad>"
    vocab = json.loads((tmp_path / "back" / "vocab.json").read_text())
    assert {k: vocab[k] for k in added} == added
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (50259, 50257)
    generation = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    # <s> begins a text, as the original config and tokenizer say (it was </s>'s id)
    assert config["bos_token_id"] == generation["bos_token_id"] == added["<s>"]


def damaged(state, key, value=None):
    state = dict(state)
    if value is None:
        del state[key]
    else:
        state[key] = value
    return state


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: damaged(s, "transformer.h.1.mlp.c_fc.bias"), "h.1.mlp.c_fc.bias is missing"),
        (
            lambda s: damaged(s, "transformer.h.0.attn.c_attn.weight", np.zeros((32, 95), "f4")),
            "c_attn.weight has shape [32, 95]",
        ),
        (
            lambda s: damaged(s, "transformer.h.0.extra", np.zeros(3, "f4")),
            "h.0.extra has no place",
        ),
        (
            lambda s: damaged(s, "lm_head.weight", s["lm_head.weight"] + 1),
            "lm_head.weight differs",
        ),
    ],
)
def test_malformed_weights_are_one_line_naming_the_tensor(vocab_files, tmp_path, change, message):
    write_hf(tmp_path / "hf", vocab_files, state=change(hf_state(50257, **SHAPE)))
    r = convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "ours").exists()


@pytest.mark.parametrize(
    "config, remove, message",
    [
        ({"activation_function": "relu"}, None, "activation_function 'relu' is not implemented"),
        ({"scale_attn_by_inverse_layer_idx": True}, None, "scale_attn_by_inverse_layer_idx"),
        ({"model_type": "llama"}, None, "only GPT-2"),
        ({}, "merges.txt", "tokenizer file merges.txt is missing"),
        ({}, "model.safetensors", "no weights"),
        ({}, "config.json", "config.json: not found"),
    ],
)
def test_malformed_directories_are_one_line(vocab_files, tmp_path, config, remove, message):
    write_hf(tmp_path / "hf", vocab_files, config=config)
    if remove:
        os.remove(tmp_path / "hf" / remove)
    r = convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_nothing_is_written_over(vocab_files, tmp_path):
    write_hf(tmp_path / "hf", vocab_files)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep", encoding="utf-8")
    for args in (
        ("from-hf", tmp_path / "hf", "--out", mine),
        ("to-hf", tmp_path / "hf", "--out", mine),
    ):
        r = convert(*args)
        assert r.returncode == 2 and "not empty" in r.stderr, r.stderr
    assert os.listdir(mine) == ["notes.txt"]
    r = convert("from-hf", "no/such", "--out", tmp_path / "x")
    assert r.returncode == 2 and "no/such" in r.stderr and "Traceback" not in r.stderr
    r = convert("sideways")
    assert r.returncode == 2 and "unknown subcommand" in r.stderr


def test_embeddings_padded_past_the_tokenizer_get_placeholder_tokens(vocab_files, tmp_path):
    """vocab_size rounded up past the tokenizer (50264 rows, 50257 tokens): the converted model
    loads, and the extra ids decode to placeholders."""
    write_hf(tmp_path / "hf", vocab_files, config={"vocab_size": 50264})
    assert convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours").returncode == 0
    from gpt2_tf2.tokenizer import load_encoder

    enc = load_encoder(str(tmp_path / "ours"))
    assert enc.n_vocab == 50264 and enc.decode([50263]) == "<|unused_50263|>"
    assert enc.encode("Hello world") == [15496, 995] and enc.eot_token == 50256


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The Hugging Face Hub's endpoints that huggingface_hub's snapshot_download uses (the file
    list, the revision, each file's metadata and bytes), serving one directory as `REPO`."""

    REPO, SHA, root = "someone/tiny-gpt2", "0" * 40, None

    def log_message(self, *args):
        pass

    def send(self, body: bytes, ctype="application/json", head=False, **headers):
        self.send_response(200)
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), **headers}
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        names = sorted(os.listdir(self.root))
        api = f"/api/models/{self.REPO}/"
        if self.path.startswith(api + "tree/"):
            tree = [{"type": "file", "path": n, "size": 1, "oid": self.SHA} for n in names]
            return self.send(json.dumps(tree).encode())
        if self.path.startswith(api + "revision/"):
            siblings = [{"rfilename": n} for n in names]
            return self.send(
                json.dumps({"id": self.REPO, "sha": self.SHA, "siblings": siblings}).encode()
            )
        prefix = f"/{self.REPO}/resolve/"
        name = self.path[len(prefix) :].split("/", 1)[-1] if self.path.startswith(prefix) else ""
        if name not in names:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound" if not name else "EntryNotFound")
            self.end_headers()
            return
        with open(os.path.join(self.root, name), "rb") as f:
            data = f.read()
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self.send(data, "application/octet-stream", head, ETag=etag, X_Repo_Commit=self.SHA)


@contextlib.contextmanager
def fake_hub(root, home):
    """A local Hub serving `root` as `FakeHub.REPO`; yields the environment that points
    huggingface_hub at it (and its cache at `home`)."""
    handler = type("Hub", (FakeHub,), {"root": str(root)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield {
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    finally:
        server.shutdown()


@pytest.mark.e2e
def test_a_repository_id_is_downloaded_with_huggingface_hub(vocab_files, tmp_path):
    """`from-hf someone/name` fetches the configuration, tokenizer and safetensors weights (not
    a second copy as pytorch_model.bin) through huggingface_hub, here from a local server. A
    process: huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported."""
    pytest.importorskip("huggingface_hub")  # comes with tokenizers (requirements-test.txt)
    import gpt2_tf2

    state = write_hf(tmp_path / "repo", vocab_files)
    (tmp_path / "repo" / "pytorch_model.bin").write_bytes(b"not wanted")
    with fake_hub(tmp_path / "repo", tmp_path / "hf_home") as env:
        out = ["--out", str(tmp_path / "ours")]
        r = run_cli(["-m", "gpt2_tf2.convert", "from-hf", FakeHub.REPO, *out], env=env)
        assert r.returncode == 0, r.stderr
        out = ["--out", str(tmp_path / "x")]
        bad = run_cli(["-m", "gpt2_tf2.convert", "from-hf", "someone/absent", *out], env=env)
    snapshot = list((tmp_path / "hf_home").rglob("model.safetensors"))
    assert len(snapshot) == 1 and not list((tmp_path / "hf_home").rglob("pytorch_model.bin"))
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    ids = lm.encoder.encode("Hello there, friend.")
    ours = lm.model(np.array([ids], np.int32))["logits"].numpy()[0]
    assert float(np.max(np.abs(ours - numpy_gpt2(state, ids, n_head=4)))) <= 1e-4
    assert bad.returncode == 2 and bad.stderr.startswith("error: someone/absent: cannot download")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
