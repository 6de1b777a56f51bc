"""Reference tier: agreement with independent implementations, on a model and texts that no
other test uses.

- Logits and greedy continuations against Hugging Face transformers' PyTorch GPT2LMHeadModel, whose
  weights are read from our OpenAI-layout directory with TensorFlow's checkpoint reader (no gpt2_tf2
  code involved), max abs logit difference <= 1e-4 in float32.
- Tokenization against tiktoken on held-out texts.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_random_model

pytestmark = pytest.mark.reference
# Imported by the `hf` fixture when a reference test runs, so that the fast tier (plain `pytest`)
# collects this file without them; missing when selected (`-m reference`) is a failure.
torch = transformers = None


@pytest.fixture(scope="module", autouse=True)
def hf():
    global torch, transformers
    import torch as torch_module  # requirements-reference.txt
    import transformers as transformers_module

    torch, transformers = torch_module, transformers_module


HELD_OUT = [
    "The committee postponed its decision until the spring, citing unresolved budget questions.",
    "В 1961 году Юрий Гагарин стал первым человеком, совершившим полёт в космос.",
    "東京タワーは1958年に完成した電波塔です。",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product",
    "¡Qué día tan bonito! Ça va? Ünïcödé 😀🚀  \t  mixed   spacing\n\n",
]


def hf_model_from_openai_dir(model_dir):
    """Build HF's GPT-2 from an OpenAI-layout checkpoint using only TF's reader and HF's classes."""
    import json

    hp = json.load(open(os.path.join(model_dir, "hparams.json")))
    config = transformers.GPT2Config(
        vocab_size=hp["n_vocab"],
        n_positions=hp["n_ctx"],
        n_embd=hp["n_embd"],
        n_layer=hp["n_layer"],
        n_head=hp["n_head"],
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    rename = {"g": "weight", "b": "bias", "w": "weight"}
    state = {}
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        parts = name.split("/")[1:]  # drop "model"
        if parts[0] in ("wte", "wpe"):
            key = f"transformer.{parts[0]}.weight"
        elif parts[0] == "ln_f":
            key = f"transformer.ln_f.{rename[parts[1]]}"
        else:  # h{i}/{ln_1|attn|ln_2|mlp}[/{c_attn|c_proj|c_fc}]/{w|b|g}
            layer = int(parts[0][1:])
            key = f"transformer.h.{layer}." + ".".join(parts[1:-1]) + "." + rename[parts[-1]]
            if parts[-1] == "w":
                value = value[0]  # [1, nx, nf] -> HF Conv1D's [nx, nf]
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k or "attn.bias" in k for k in missing), missing
    model.tie_weights()
    return model


@pytest.fixture(scope="module")
def models(hf, vocab_files, tmp_path_factory):
    import gpt2_tf2

    path = tmp_path_factory.mktemp("ref") / "heldout"
    write_random_model(path, vocab_files, seed=2024, n_ctx=96, n_embd=48, n_head=6, n_layer=3)
    return gpt2_tf2.load(str(path)), hf_model_from_openai_dir(str(path))


def test_logits_match_transformers(models):
    ours, hf = models
    for text in HELD_OUT:
        ids = ours.encoder.encode(text)[: ours.hparams.n_ctx]
        mine = ours.model(tf.constant([ids], tf.int32))["logits"].numpy()[0]
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.numpy()[0]
        diff = float(np.max(np.abs(mine - theirs)))
        assert diff <= 1e-4, f"max abs logit difference {diff:.2e} on {text[:30]!r}"


def test_greedy_continuations_match_transformers(models):
    ours, hf = models
    for text in HELD_OUT[:3]:
        ids = ours.encoder.encode(text)
        mine = next(ours.generate_tokens(ids, length=12, temperature=0))[0]
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=50256,
                attention_mask=torch.ones(1, len(ids)),
            )
        assert mine == out[0, len(ids) :].tolist()


def test_batched_cached_logits_match_transformers(models):
    """The cached decode path, at batch 2, against HF's full forward."""
    ours, hf = models
    ids = ours.encoder.encode(HELD_OUT[0])[:20]
    batch = tf.constant([ids, ids[::-1]], tf.int32)
    cache = ours.model.init_cache(2, 20)
    out = ours.model(batch[:, :5], cache, 0)
    steps, cache = [out["logits"].numpy()], out["cache"]
    for i in range(5, 20):
        out = ours.model(batch[:, i : i + 1], cache, i)
        steps.append(out["logits"].numpy())
        cache = out["cache"]
    with torch.no_grad():
        theirs = hf(torch.tensor(batch.numpy().astype(np.int64))).logits.numpy()
    assert float(np.max(np.abs(np.concatenate(steps, 1) - theirs))) <= 1e-4


def test_left_padded_batch_matches_transformers(models):
    """Prompts of different lengths in one batch, left-padded: our logits (offsets) and greedy
    continuations equal transformers' with its attention mask and position ids, row by row."""
    ours, hf = models
    rows = [ours.encoder.encode(t)[:n] for t, n in zip(HELD_OUT, (3, 17, 9))]
    size = max(len(r) for r in rows)
    pad = 50256
    padded = [[pad] * (size - len(r)) + r for r in rows]
    mask = [[0] * (size - len(r)) + [1] * len(r) for r in rows]
    offsets = tf.constant([size - len(r) for r in rows], tf.int32)
    mine = ours.model(tf.constant(padded, tf.int32), offsets=offsets)["logits"].numpy()
    positions = torch.clamp(torch.cumsum(torch.tensor(mask), 1) - 1, min=0)
    with torch.no_grad():
        theirs = hf(
            torch.tensor(padded), attention_mask=torch.tensor(mask), position_ids=positions
        ).logits.numpy()
    for i, r in enumerate(rows):
        diff = float(np.max(np.abs(mine[i, size - len(r) :] - theirs[i, size - len(r) :])))
        assert diff <= 1e-4, f"row {i}: max abs logit difference {diff:.2e}"
    (batch,) = ours.generate_tokens(rows, length=15, temperature=0, batch_size=3)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor(padded),
            attention_mask=torch.tensor(mask),
            max_new_tokens=15,
            do_sample=False,
            pad_token_id=pad,
        )
    assert batch == out[:, size:].tolist()


def test_tokenization_matches_tiktoken_held_out(models, tiktoken_gpt2):
    ours, _ = models
    for text in HELD_OUT:
        assert ours.encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)
        assert ours.encoder.decode(ours.encoder.encode(text)) == text


def test_own_vocabulary_tokenizes_as_gpt2_tokenizer_fast(tmp_path):
    """A vocabulary from `vocab train`, read by transformers' GPT2TokenizerFast (its files renamed
    to Hugging Face's vocab.json and merges.txt): the same ids as our encoder on held-out text."""
    from gpt2_tf2.tokenizer import load_encoder
    from gpt2_tf2.tokenizer import train as training

    corpus = tmp_path / "corpus.txt"
    lines = [f"Строка {i}: the quick brown fox {i % 9} jumps; лиса прыгает." for i in range(800)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    held, _, _ = training.train([str(corpus)], str(tmp_path / "vocab"), 700, progress=False)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.json").write_bytes((tmp_path / "vocab" / "encoder.json").read_bytes())
    (hf_dir / "merges.txt").write_bytes((tmp_path / "vocab" / "vocab.bpe").read_bytes())
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(hf_dir))
    ours = load_encoder(str(tmp_path / "vocab"))
    for text in held + HELD_OUT:
        ids = reference(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == reference.decode(ids) == text


@pytest.mark.parametrize(
    "penalty, ngram", [(1.3, 0), (0.8, 0), (1.0, 1), (1.0, 2), (1.0, 3), (1.5, 2)]
)
def test_repetition_controls_match_transformers_processors(penalty, ngram):
    """Our processors against transformers' RepetitionPenaltyLogitsProcessor and
    NoRepeatNGramLogitsProcessor, on random logits and repetitive random histories."""
    from gpt2_tf2.generation.history import History
    from gpt2_tf2.generation.processors import apply_processors
    from gpt2_tf2.generation.settings import Settings

    rng = np.random.default_rng(ngram * 10 + int(penalty * 10))
    batch, vocab, length, width = 4, 12, 15, 20
    tokens = rng.integers(0, 3, size=(batch, width)).astype(np.int32)  # few ids: many repeats
    logits = rng.normal(size=(batch, vocab)).astype(np.float32) * 3
    settings = Settings.make(repetition_penalty=penalty, no_repeat_ngram_size=ngram)
    tokens_with_padding = np.where(np.arange(width) < length, tokens, -1)
    ours = apply_processors(
        tf.constant(logits), settings, History(tf.constant(tokens_with_padding), length)
    ).numpy()
    processors = transformers.LogitsProcessorList()
    if penalty != 1.0:
        processors.append(transformers.RepetitionPenaltyLogitsProcessor(penalty))
    if ngram:
        processors.append(transformers.NoRepeatNGramLogitsProcessor(ngram))
    theirs = processors(
        torch.tensor(tokens[:, :length].astype(np.int64)), torch.tensor(logits)
    ).numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    finite = np.isfinite(theirs)
    assert float(np.max(np.abs(ours[finite] - theirs[finite]))) <= 1e-6
    assert not np.array_equal(ours, logits)  # the case exercises the control


@pytest.mark.parametrize("penalty, ngram", [(1.3, 0), (1.0, 2), (1.2, 3)])
def test_greedy_with_repetition_controls_matches_transformers(models, penalty, ngram):
    """Greedy decoding of a random model loops; with the controls its output must equal
    transformers' generate() with the same repetition_penalty and no_repeat_ngram_size."""
    ours, hf = models
    ids = ours.encoder.encode(HELD_OUT[1])[:10]
    plain = next(ours.generate_tokens(ids, length=40, temperature=0))[0]
    mine = next(
        ours.generate_tokens(
            ids, length=40, temperature=0, repetition_penalty=penalty, no_repeat_ngram_size=ngram
        )
    )[0]
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=40,
            do_sample=False,
            repetition_penalty=penalty,
            no_repeat_ngram_size=ngram,
            pad_token_id=50256,
            attention_mask=torch.ones(1, len(ids)),
        )
    assert mine == out[0, len(ids) :].tolist()
    assert mine != plain


@pytest.mark.parametrize(
    "beams, length_penalty, early_stopping, ngram, stop_rank, ends_early",
    [
        (4, 1.0, False, 0, None, False),
        (3, 2.0, True, 0, 2, False),
        (4, -0.5, False, 2, 1, True),
        (5, 1.0, False, 0, 0, False),
        (2, 0.0, True, 3, 3, True),
    ],
)
def test_beam_search_matches_transformers(
    models, beams, length_penalty, early_stopping, ngram, stop_rank, ends_early
):
    """Every returned beam, in order, equals transformers' beam search with the same settings.
    The end token is one the beams meet (stop_rank: a token greedy decoding emits), so in some
    cases hypotheses end early and the finished-list bookkeeping is exercised."""
    ours, hf = models
    ids = ours.encoder.encode(HELD_OUT[2])[:8]
    greedy = next(ours.generate_tokens(ids, length=12, temperature=0))[0]
    stop = 50256 if stop_rank is None else greedy[stop_rank]
    mine = ours.beam_search(
        ids,
        length=20,
        num_beams=beams,
        num_return_sequences=beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        no_repeat_ngram_size=ngram,
        stop_token=stop,
    )
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=20,
            do_sample=False,
            num_beams=beams,
            num_return_sequences=beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            no_repeat_ngram_size=ngram,
            eos_token_id=stop,
            pad_token_id=stop,
            attention_mask=torch.ones(1, len(ids)),
        )
    theirs = []
    for row in out[:, len(ids) :].tolist():
        theirs.append(row[: row.index(stop)] if stop in row else row)
    assert mine == theirs
    assert any(len(row) < 20 for row in mine) == ends_early


def test_attention_maps_match_transformers(models):
    """The attention view's maps against transformers' output_attentions (eager attention)."""
    from gpt2_tf2.core.attention_maps import attention_maps

    ours, hf = models
    ids = ours.encoder.encode(HELD_OUT[1])[:40]
    mine = attention_maps(ours.model, ids)
    hf.config._attn_implementation = "eager"  # the attention weights are returned by it
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    theirs = np.stack([a[0].numpy() for a in out.attentions])  # [layers, heads, seq, seq]
    assert float(np.max(np.abs(mine - theirs))) <= 1e-5
