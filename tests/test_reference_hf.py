"""Hugging Face directories written by transformers itself, through `convert from-hf` and back
(`to-hf`): logits, tokenization and greedy continuations equal transformers' own, for GPT-2's
vocabulary with added tokens and for a ruGPT-3-like model (its own byte-level BPE trained here,
ruGPT-3's five special tokens first, </s> ending a text, a 2048-token context), before and
after fine-tuning here. Reference tier: `pytest -m reference` (requirements-reference.txt). The
commands run through their entry points in the test process (their logic is the subject), but
for the download from a Hub, whose endpoint huggingface_hub reads from the environment once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, run_in_process

pytestmark = pytest.mark.reference

HELD_OUT = [
    "The committee postponed its decision until the spring.",
    "В 1961 году Юрий Гагарин стал первым человеком в космосе.",
    "¡Qué día tan bonito! Ünïcödé 😀  mixed   spacing\n",
]
RU_TRAIN = [
    f"Строка {i}: мороз и солнце, день чудесный; ещё ты дремлешь, друг прелестный {i % 7}."
    for i in range(600)
]
RU_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]


@pytest.fixture(scope="module")
def hf():
    import torch
    import transformers

    return torch, transformers


def convert(*args):
    r = run_in_process(["-m", "gpt2_tf2.convert", *map(str, args)])
    assert r.returncode == 0, r.stderr
    return r


def logits_diff(lm, model, ids) -> float:
    torch = pytest.importorskip("torch")
    ours = lm.model(np.array([ids], np.int32))["logits"].numpy()[0]
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()[0]
    return float(np.max(np.abs(ours - theirs)))


def gpt2_with_added_tokens(hf, vocab_files, path):
    """GPT-2's vocabulary plus 7 added special tokens (50264), a random 2-layer model."""
    torch, transformers = hf
    tok = transformers.GPT2TokenizerFast(
        vocab=vocab_files["encoder.json"], merges=vocab_files["vocab.bpe"]
    )
    tok.add_special_tokens({"additional_special_tokens": [f"<|extra_{i}|>" for i in range(7)]})
    assert len(tok) == 50264
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=48, n_layer=2, n_head=4
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def rugpt3_like(hf, path, tmp_path):
    """A ruGPT-3-like directory: a byte-level BPE trained here with ruGPT-3's specials at ids
    0-4 (</s> ends a text), a 2048-token context, saved by transformers."""
    import tokenizers

    torch, transformers = hf
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(RU_TRAIN, vocab_size=600, special_tokens=RU_SPECIALS)
    tok = transformers.GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    assert [tok.convert_tokens_to_ids(t) for t in RU_SPECIALS] == [0, 1, 2, 3, 4]
    config = transformers.GPT2Config(
        vocab_size=len(tok),
        n_positions=2048,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_gpt2_with_added_tokens_in_and_out(hf, vocab_files, tmp_path):
    import gpt2_tf2

    torch, transformers = hf
    model, tok = gpt2_with_added_tokens(hf, vocab_files, tmp_path / "hf")
    convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    assert lm.hparams.n_vocab == 50264 and lm.encoder.eot_token == 50256
    for text in HELD_OUT:
        ids = lm.encoder.encode(text)
        assert ids == tok(text)["input_ids"], text
        assert logits_diff(lm, model, ids) <= 1e-4, text
    ids = lm.encoder.encode(HELD_OUT[0])
    mine = next(lm.generate_tokens(ids, length=12, temperature=0))[0]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=50256
        )
    assert mine == out[0, len(ids) :].tolist()

    convert("to-hf", tmp_path / "ours", "--out", tmp_path / "back")
    back = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "back")).eval()
    back_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    for text in HELD_OUT:
        ids = lm.encoder.encode(text)
        assert back_tok(text)["input_ids"] == ids
        assert logits_diff(lm, back, ids) <= 1e-4


def test_rugpt3_like_converts_fine_tunes_and_goes_back(hf, tmp_path):
    """The seminar's workflow: convert, sample, fine-tune with --sequence_length 64, convert
    back, load in transformers: its logits are ours at every step of the way."""
    import gpt2_tf2

    torch, transformers = hf
    model, tok = rugpt3_like(hf, tmp_path / "hf", tmp_path)
    convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ru")
    lm = gpt2_tf2.load(str(tmp_path / "ru"))
    assert lm.hparams.n_ctx == 2048 and lm.encoder.eot_token == 2
    specials = json.loads((tmp_path / "ru" / "special_tokens.json").read_text())
    assert specials["end_of_text"] == "</s>" and set(RU_SPECIALS) <= set(specials["special_tokens"])
    held = [f"Строка {i}: мороз и солнце, друг прелестный." for i in range(700, 705)] + HELD_OUT
    for text in held:
        ids = lm.encoder.encode(text)
        assert ids == tok(text)["input_ids"], text
        assert lm.encoder.decode(ids) == tok.decode(ids) == text
        assert logits_diff(lm, model, ids) <= 1e-4, text
    ids = lm.encoder.encode("Мороз и солнце")
    mine = next(lm.generate_tokens(ids, length=20, temperature=0, stop_at_endoftext=True))[0]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    theirs = out[0, len(ids) :].tolist()
    assert mine == (theirs[: theirs.index(2)] if 2 in theirs else theirs)

    text = tmp_path / "song.txt"
    text.write_text("\n".join(RU_TRAIN[:200]), encoding="utf-8")
    r = run_in_process(
        ["-m", "gpt2_tf2.train", "--model_name", str(tmp_path / "ru"), "--dataset", str(text)]
        + ["--run_name", "song", "--checkpoint_dir", str(tmp_path / "ckpt"), "--steps", "3"]
        + ["--sequence_length", "64", "--batch_size", "2", "--sample_every", "0"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    r = run_in_process(
        ["-m", "gpt2_tf2.export", "--run_name", "song", "--checkpoint_dir", str(tmp_path / "ckpt")]
        + ["--out", str(tmp_path / "tuned")]
    )
    assert r.returncode == 0, r.stderr
    convert("to-hf", tmp_path / "tuned", "--out", tmp_path / "tuned_hf")
    tuned = gpt2_tf2.load(str(tmp_path / "tuned"))
    back = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "tuned_hf")).eval()
    back_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tuned_hf"))
    assert back.generation_config.eos_token_id == 2
    for text in held[:3]:
        ids = tuned.encoder.encode(text)
        assert back_tok(text)["input_ids"] == ids
        assert logits_diff(tuned, back, ids) <= 1e-4
        assert logits_diff(tuned, model, ids) > 1e-3  # fine-tuning changed the model


@pytest.mark.parametrize("layout", ["shards", "pytorch_model.bin"])
def test_sharded_safetensors_and_pytorch_bins_convert(hf, vocab_files, tmp_path, layout):
    """transformers' shards (model.safetensors.index.json) and a PyTorch pickle (read with
    torch, which this tier has) give the same logits as the model."""
    import gpt2_tf2

    torch, transformers = hf
    model, tok = gpt2_with_added_tokens(hf, vocab_files, tmp_path / "one")
    path = tmp_path / layout
    if layout == "shards":
        model.save_pretrained(path, max_shard_size="2MB")
        assert (path / "model.safetensors.index.json").exists()
    else:
        path.mkdir()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        (path / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    tok.save_pretrained(path)
    convert("from-hf", path, "--out", tmp_path / "ours")
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    ids = lm.encoder.encode(HELD_OUT[1])
    assert logits_diff(lm, model, ids) <= 1e-4


def test_untied_output_layer_in_and_out(hf, vocab_files, tmp_path):
    """A GPT2LMHeadModel with tie_word_embeddings=False (its own lm_head), saved by
    transformers: our logits equal its; back through to-hf, transformers loads the same model."""
    import gpt2_tf2

    torch, transformers = hf
    tok = transformers.GPT2TokenizerFast(
        vocab=vocab_files["encoder.json"], merges=vocab_files["vocab.bpe"]
    )
    config = transformers.GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    head, wte = model.lm_head.weight, model.transformer.wte.weight
    assert head.data_ptr() != wte.data_ptr() and not torch.equal(head, wte)
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    convert("from-hf", tmp_path / "hf", "--out", tmp_path / "ours")
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    ids = lm.encoder.encode(HELD_OUT[0])
    assert logits_diff(lm, model, ids) <= 1e-4
    convert("to-hf", tmp_path / "ours", "--out", tmp_path / "back")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    assert not again.config.tie_word_embeddings
    assert torch.equal(again.lm_head.weight, head) and torch.equal(
        again.transformer.wte.weight, wte
    )
    assert logits_diff(lm, again, ids) <= 1e-4


def test_a_repository_with_only_a_pytorch_bin_downloads(hf, vocab_files, tmp_path):
    """ruGPT-3's older uploads hold pytorch_model.bin and no safetensors: `from-hf REPO_ID`
    fetches it (from a local server speaking the Hub's endpoints) and torch reads it."""
    from test_convert import FakeHub, fake_hub

    import gpt2_tf2

    torch, transformers = hf
    model, tok = gpt2_with_added_tokens(hf, vocab_files, tmp_path / "saved")
    repo = tmp_path / "repo"
    repo.mkdir()
    torch.save(model.state_dict(), repo / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tmp_path / "saved" / name).exists():
            (repo / name).write_bytes((tmp_path / "saved" / name).read_bytes())
    with fake_hub(repo, tmp_path / "hf_home") as env:
        args = ["-m", "gpt2_tf2.convert", "from-hf", FakeHub.REPO, "--out", str(tmp_path / "ours")]
        r = run_cli(args, env=env)
    assert r.returncode == 0, r.stderr
    lm = gpt2_tf2.load(str(tmp_path / "ours"))
    assert logits_diff(lm, model, lm.encoder.encode(HELD_OUT[0])) <= 1e-4


def test_special_tokens_in_text_are_read_as_transformers_reads_them(hf, vocab_files, tmp_path):
    """One rule for prompts, scored texts and datasets: a special token's spelling is that
    token, as transformers' tokenizer reads it (sample and the API read it as text before,
    while encode read it as the token)."""
    import gpt2_tf2
    from gpt2_tf2.training.data import load_dataset

    gpt2_model, gpt2_tok = gpt2_with_added_tokens(hf, vocab_files, tmp_path / "gpt2")
    ru_model, ru_tok = rugpt3_like(hf, tmp_path / "ru_hf", tmp_path)
    convert("from-hf", tmp_path / "gpt2", "--out", tmp_path / "gpt2_ours")
    convert("from-hf", tmp_path / "ru_hf", "--out", tmp_path / "ru_ours")
    cases = [
        (tmp_path / "gpt2_ours", gpt2_tok, ["a<|endoftext|>b", "<|extra_3|> x <|endoftext|>"]),
        (tmp_path / "ru_ours", ru_tok, ["<s>Мороз и солнце</s>", "день</s><pad> чудесный<mask>"]),
    ]
    for directory, tok, texts in cases:
        lm = gpt2_tf2.load(str(directory))
        for text in texts:
            theirs = tok(text)["input_ids"]
            assert lm.encode(text) == theirs, text
            assert len(theirs) < len(lm.encoder.encode(text))  # the specials were read as such
            total, count = lm.score_tokens(theirs)
            assert lm.score(text) == pytest.approx(total / count, abs=1e-6)
            greedy = next(lm.generate_tokens(theirs, length=4, temperature=0))[0]
            assert lm.generate(text, length=4, temperature=0) == [lm.encoder.decode(greedy)]
            (tmp_path / "d.txt").write_text(text, encoding="utf-8")
            (chunk,) = load_dataset(lm.encoder, str(tmp_path / "d.txt"))
            assert chunk.tolist() == theirs
