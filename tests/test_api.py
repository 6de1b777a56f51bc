"""The Python API on a tiny model: generate(), score(), determinism and retracing."""

import numpy as np
import pytest
import tensorflow as tf

import gpt2_tf2
from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.language_model import LanguageModel
from gpt2_tf2.generation.loop import bucket
from gpt2_tf2.generation.settings import Settings
from gpt2_tf2.generation.strategies import choose_tokens
from gpt2_tf2.generation.xla import programs


@pytest.fixture()
def lm(tiny_lm):
    return tiny_lm  # shared: read only


def test_load_by_name_and_alias(tiny_model_dir, tmp_path):
    import os
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "124M")
    assert gpt2_tf2.load("124M", models_dir=str(tmp_path)).model_dir == str(tmp_path / "124M")
    assert gpt2_tf2.load("117M", models_dir=str(tmp_path)).model_dir == str(tmp_path / "124M")
    with pytest.raises(UserError, match="python -m gpt2_tf2.download 355M"):
        gpt2_tf2.load("345M", models_dir=str(tmp_path))
    with pytest.raises(UserError, match="unknown model 'gpt5'"):
        gpt2_tf2.load("gpt5", models_dir=str(tmp_path))
    assert os.path.isdir(tiny_model_dir)


def test_model_returns_logits(lm):
    out = lm.model(tf.constant([[464, 2068]], tf.int32))
    assert out["logits"].shape == (1, 2, lm.hparams.n_vocab)


def test_generate_shapes_and_determinism(lm):
    a = lm.generate("The quick brown fox", length=6, nsamples=3, batch_size=2, seed=42, top_k=40)
    b = lm.generate("The quick brown fox", length=6, nsamples=3, batch_size=2, seed=42, top_k=40)
    assert len(a) == 3 and a == b
    assert all(len(lm.encoder.encode(s)) >= 1 for s in a)
    assert lm.generate("The quick brown fox", length=6, nsamples=3, batch_size=2, seed=43) != a


def test_unconditional_and_greedy(lm):
    greedy = lm.generate(length=8, temperature=0, nsamples=2, batch_size=2, seed=1)
    assert greedy[0] == greedy[1]  # greedy ignores randomness
    tokens = [464]
    for _ in range(5):  # greedy decoding equals argmax of full forward passes
        logits = lm.model(tf.constant([[50256] + tokens], tf.int32))["logits"][0, -1]
        tokens.append(int(tf.argmax(logits)))
    out = next(lm.generate_tokens([464], length=5, temperature=0))[0]
    assert out == tokens[1:]


def test_stop_at_endoftext(tiny_model_dir):
    """Make <|endoftext|> the most likely token everywhere; samples must then end at once."""
    lm = gpt2_tf2.load(tiny_model_dir)  # its own: the weights are changed
    saved = {v.name: v.numpy() for v in lm.model.variables}
    try:
        direction = np.zeros(lm.hparams.n_embd, np.float32)
        direction[0] = 1.0
        lm.model.wte.assign(tf.tensor_scatter_nd_update(lm.model.wte, [[50256]], [direction * 10]))
        lm.model.ln_f.g.assign(np.zeros(lm.hparams.n_embd, np.float32))
        lm.model.ln_f.b.assign(direction)  # every position's logits = wte @ direction
        rows = next(lm.generate_tokens([464], length=20, temperature=0, stop_at_endoftext=True))
        assert rows == [[]]
        rows = next(lm.generate_tokens([464], length=20, temperature=0))
        assert rows == [[50256] * 20]
    finally:
        for v in lm.model.variables:
            v.assign(saved[v.name])


def test_no_retracing_within_a_bucket(tiny_model_dir):
    """Other prompts, prompt lengths, lengths and settings in the same size bucket and batch size
    reuse one trace of the decode engine's loop (and one XLA compilation); a new bucket or batch
    size costs one more."""
    lm = gpt2_tf2.load(tiny_model_dir)  # its own: its traces are counted
    before = programs(lm)[0].experimental_get_tracing_count()
    for prompt, length, kw in [
        ("a", 3, {}),
        ("longer prompt here", 9, {"top_p": 0.9}),
        (None, 5, {"top_k": 5, "temperature": 0.7}),
        ("x y", 1, {"temperature": 0}),
        ("x y z", 16, {"top_k": 300, "top_p": 0.5}),
    ]:
        lm.generate(prompt, length=length, nsamples=2, batch_size=2, seed=0, **kw)
    assert programs(lm)[0].experimental_get_tracing_count() - before <= 1
    lm.generate("a", length=17, nsamples=2, batch_size=2, seed=0)  # length bucket 32
    lm.generate("a", length=3, nsamples=3, batch_size=3, seed=0)  # batch size 3
    assert programs(lm)[0].experimental_get_tracing_count() - before <= 3


def test_bucket():
    assert [bucket(n, 1024) for n in (1, 16, 17, 100, 1000, 1024)] == [16, 16, 32, 128, 1024, 1024]
    assert [bucket(n, 40) for n in (1, 17, 33, 40)] == [16, 32, 40, 40]  # never past the limit


@pytest.mark.parametrize("batch", [1, 2])  # batch 1: matrix-vector products (see conv1d)
def test_compiled_generation_equals_eager_reference(lm, batch):
    """XLA-compiled decoding (bucketed, cached) gives the tokens of an eager full-pass loop."""
    prompt = lm.encoder.encode("The reference loop recomputes everything")
    for temperature, top_k, top_p in [(0.0, 0, 1.0), (0.9, 7, 0.8), (1.0, 0, 0.95)]:
        settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": 3}
        got = next(
            lm.generate_tokens(prompt, length=12, nsamples=batch, batch_size=batch, **settings)
        )
        key = Settings.make(temperature=temperature, top_k=top_k, top_p=top_p, key=(3, 0))
        seq = tf.constant([prompt] * batch, tf.int32)
        want = []
        for step in range(12):
            logits = lm.model(seq)["logits"][:, -1]  # no cache, no padding, eager
            token = choose_tokens(logits, key, step)
            want.append(token.numpy())
            seq = tf.concat([seq, token[:, None]], axis=1)
        assert got == np.stack(want, axis=1).tolist(), (temperature, top_k, top_p)


@pytest.mark.parametrize(  # the compiled loop in the default tier, the plain graph `large`
    "xla", [True, pytest.param(False, marks=pytest.mark.large)]
)
def test_unconditional_full_context(lm, xla):
    """Unconditional samples fill the whole context after <|endoftext|> (the default length),
    compiled or not: nothing runs at a position past the context, and the tokens match an eager
    full pass."""
    model = LanguageModel(lm.hparams, lm.encoder, lm.model, xla=xla)
    n_ctx = lm.hparams.n_ctx
    (row,) = next(model.generate_tokens(None, temperature=0.0))
    assert len(row) == n_ctx
    logits = lm.model(tf.constant([[lm.encoder.eot_token] + row[:-1]]))["logits"][0]
    assert row == tf.argmax(logits, axis=-1, output_type=tf.int32).numpy().tolist()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"length": -1}, "length"),
        ({"length": 0}, "length"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"temperature": -1}, "temperature"),
        ({"window_stride": 64}, "`window_stride` must be an integer in 1..63"),
        ({"length": 100, "num_beams": 2}, "exceeds the model's context of 64"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings(lm, kwargs, message):
    with pytest.raises(UserError, match=message):
        lm.generate("hello", **kwargs)


def test_prompt_plus_length_limit(lm):
    prompt = " a" * 60
    assert len(lm.encoder.encode(prompt)) == 60
    assert len(lm.generate(prompt, length=4, temperature=0)) == 1  # exactly n_ctx: one window
    # Past the context a sliding window goes on (issue 14); a prompt must leave room.
    tokens = next(lm.generate_tokens(lm.encoder.encode(prompt), length=50, temperature=0))[0]
    assert len(tokens) == 50
    with pytest.raises(UserError, match="fills the model's context of 64"):
        lm.generate(" a" * 64, length=5)


def _reference_nll(lm, ids):
    logits = lm.model(tf.constant([ids[:-1]], tf.int32))["logits"].numpy()[0].astype(np.float64)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    return -logp[np.arange(len(ids) - 1), ids[1:]]


def test_score_short_text(lm):
    text = "Hello world, this is a short text."
    ids = [50256] + lm.encoder.encode(text)
    assert abs(lm.score(text) - _reference_nll(lm, ids).mean()) < 1e-5


def test_score_long_text_windows(lm):
    """Longer than n_ctx: each token scored once, from n_ctx//2 .. n_ctx-1 earlier ones."""
    tokens = lm.encoder.encode("one two three four five six seven eight nine ten " * 20)
    assert len(tokens) > 3 * lm.hparams.n_ctx
    total, count = lm.score_tokens(tokens)
    assert count == len(tokens)
    ids, n_ctx, half = [50256] + tokens, lm.hparams.n_ctx, lm.hparams.n_ctx // 2
    expected = list(_reference_nll(lm, ids[:n_ctx]))
    end = n_ctx
    while end < len(ids):
        new_end = min(len(ids), end + half)
        expected += list(_reference_nll(lm, ids[new_end - n_ctx : new_end])[-(new_end - end) :])
        end = new_end
    assert abs(total - sum(expected)) < 1e-3


def test_score_empty(lm):
    with pytest.raises(UserError, match="nothing to score"):
        lm.score("")


# Documented tolerances (README, docs/benchmarks/all.md): max |logit difference| against float32,
# as a fraction of the largest |logit|: 16-bit weights and activations, float32 norms and softmax.
LOW_PRECISION_TOLERANCE = {"float16": 0.01, "bfloat16": 0.05}


@pytest.mark.parametrize(  # float16 in the default tier, bfloat16 `large`
    "dtype", ["float16", pytest.param("bfloat16", marks=pytest.mark.large)]
)
def test_low_precision_close_to_float32(lm, tiny_model_dir, dtype):
    low = gpt2_tf2.load(tiny_model_dir, dtype=dtype)
    assert {v.dtype.name for v in low.model.variables} == {dtype}  # weights cast once, at load
    tokens = tf.constant([lm.encoder.encode("Half precision keeps norms in float32.")], tf.int32)
    want = lm.model(tokens)["logits"].numpy()
    got = low.model(tokens)["logits"].numpy()
    assert got.dtype == np.float32
    ratio = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert ratio <= LOW_PRECISION_TOLERANCE[dtype], ratio
    rows = next(
        low.generate_tokens(tokens.numpy()[0].tolist(), length=8, nsamples=2, batch_size=2, seed=1)
    )  # XLA path
    assert [len(r) for r in rows] == [8, 8]
    assert (
        abs(low.score("Scored in half precision.") - lm.score("Scored in half precision.")) < 0.05
    )


def test_unknown_dtype(tiny_model_dir):
    with pytest.raises(UserError, match="`dtype` must be one of float32, float16, bfloat16"):
        gpt2_tf2.load(tiny_model_dir, dtype="int2")


def test_one_model_serves_plain_and_compiled_loops(tiny_model_dir):
    """A model decoded first in a plain graph, then under XLA, with the same shapes (its traced
    block must not carry the plain graph's kernels into the compiled loop), and the reverse."""
    for first_xla in (False, True):
        lm = gpt2_tf2.load(tiny_model_dir)  # a fresh model: its block has no traces yet
        plain = LanguageModel(lm.hparams, lm.encoder, lm.model, xla=False)
        runs = [plain, lm] if not first_xla else [lm, plain]
        out = [next(m.generate_tokens([464, 2068], length=5, temperature=0)) for m in runs]
        assert out[0] == out[1]
