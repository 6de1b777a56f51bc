"""The model's maths: cached decoding equals the full pass; pieces follow the original."""

import math

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.core.kernels import first_argmax, transposed_product
from gpt2_tf2.core.model import GPT2, LayerNorm, gelu
from gpt2_tf2.errors import UserError

HP = HParams(n_vocab=97, n_ctx=40, n_embd=24, n_head=3, n_layer=2)


@pytest.fixture(scope="module")
def model():
    m = GPT2(HP, seed=7)
    gen = tf.random.Generator.from_seed(3)
    for v in m.variables:
        if v.shape.rank == 1:
            v.assign(v + gen.normal(v.shape, stddev=0.1))
    return m


def test_gelu_is_tanh_approximation():
    x = np.linspace(-6, 6, 101).astype(np.float32)
    ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.max(np.abs(gelu(tf.constant(x)).numpy() - ref)) < 1e-6


def test_layer_norm_epsilon():
    ln = LayerNorm(4, 1e-5, "t")
    x = np.array([[1.0, 1.0, 1.0, 1.0 + 1e-3]], np.float32)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-5)
    assert np.max(np.abs(ln(tf.constant(x)).numpy() - ref)) < 1e-5


def test_variable_shapes_are_openai_layout(model):
    names = {v.name.split(":")[0]: v.shape.as_list() for v in model.variables}
    e = HP.n_embd
    assert names["model/h0/attn/c_attn/w"] == [1, e, 3 * e]
    assert names["model/h1/mlp/c_proj/w"] == [1, 4 * e, e]
    assert names["model/wte"] == [HP.n_vocab, e]
    assert names["model/ln_f/g"] == [e]


def test_causal(model):
    """Changing a later token never changes earlier logits."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, HP.n_vocab, (2, 12)).astype(np.int32)
    b = a.copy()
    b[:, 7:] = rng.integers(0, HP.n_vocab, (2, 5))
    la, lb = model(tf.constant(a))["logits"].numpy(), model(tf.constant(b))["logits"].numpy()
    assert np.max(np.abs(la[:, :7] - lb[:, :7])) == 0
    assert np.max(np.abs(la[:, 7:] - lb[:, 7:])) > 1e-3


@pytest.mark.parametrize("prefill", [1, 5, 11])
def test_cached_decoding_equals_full_pass(model, prefill):
    rng = np.random.default_rng(prefill)
    tokens = tf.constant(rng.integers(0, HP.n_vocab, (3, 16)).astype(np.int32))
    full = model(tokens)["logits"].numpy()
    cache = model.init_cache(3, 20)  # longer than needed: unused slots must stay invisible
    out = model(tokens[:, :prefill], cache, 0)
    steps, cache = [out["logits"].numpy()], out["cache"]
    for i in range(prefill, 16):
        out = model(tokens[:, i : i + 1], cache, i)
        steps.append(out["logits"].numpy())
        cache = out["cache"]
        shapes = tf.nest.map_structure(lambda c: c.shape, cache)
        assert shapes == tf.nest.map_structure(lambda c: c.shape, model.init_cache(3, 20))
    diff = np.max(np.abs(np.concatenate(steps, axis=1) - full))
    assert diff < 1e-5, diff


def test_cached_decoding_in_tf_function(model):
    """The same inside one compiled function, with the cache as a loop variable."""
    tokens = tf.constant(np.random.default_rng(5).integers(0, HP.n_vocab, (2, 10)), tf.int32)

    @tf.function
    def decode(tokens):
        out = model(tokens[:, :3], model.init_cache(2, 10), 0, logits_at=2)
        logits = tf.TensorArray(tf.float32, size=8)
        logits = logits.write(0, out["logits"][:, 0])

        def body(i, cache, logits):
            o = model(tokens[:, i : i + 1], cache, i, logits_at=0)
            return i + 1, o["cache"], logits.write(i - 2, o["logits"][:, 0])

        _, _, logits = tf.while_loop(lambda i, *_: i < 10, body, (3, out["cache"], logits))
        return tf.transpose(logits.stack(), [1, 0, 2])

    full = model(tokens)["logits"].numpy()[:, 2:]
    assert np.max(np.abs(decode(tokens).numpy() - full)) < 1e-5


def test_logits_at(model):
    tokens = tf.constant([[1, 2, 3, 4], [5, 6, 7, 8]], tf.int32)
    full = model(tokens)["logits"].numpy()
    last = model(tokens, model.init_cache(2, 4), 0, logits_at=3)["logits"].numpy()
    assert last.shape == (2, 1, HP.n_vocab)
    assert np.max(np.abs(last[:, 0] - full[:, -1])) < 1e-5
    per_row = model(tokens, logits_at=tf.constant([1, 2]))["logits"].numpy()  # one index per row
    assert np.max(np.abs(per_row[:, 0] - full[[0, 1], [1, 2]])) < 1e-5


@pytest.mark.parametrize("prefill", [1, 4])
def test_cached_decoding_under_xla_equals_full_pass(model, prefill):
    """The XLA path writes the cache with a dynamic-update-slice: same logits as a full pass."""
    tokens = tf.constant(np.random.default_rng(7).integers(0, HP.n_vocab, (2, 9)), tf.int32)

    @tf.function(jit_compile=True, autograph=False)
    def step(tokens, cache, pos):
        out = model(tokens, cache, pos)
        return out["logits"], out["cache"]

    logits, cache = step(tokens[:, :prefill], model.init_cache(2, 12), tf.constant(0))
    steps = [logits.numpy()]
    for i in range(prefill, 9):
        logits, cache = step(tokens[:, i : i + 1], cache, tf.constant(i))
        steps.append(logits.numpy())
    full = model(tokens)["logits"].numpy()
    assert np.max(np.abs(np.concatenate(steps, axis=1) - full)) < 1e-5


def test_blocked_causal_attention_equals_cached_decoding():
    """Long sequences without a cache attend in query blocks that skip masked keys; the result
    must equal the cached one-query-at-a-time path, which has no blocks."""
    hp = HParams(n_vocab=61, n_ctx=300, n_embd=16, n_head=2, n_layer=2)
    model = GPT2(hp, seed=3)
    tokens = tf.constant(np.random.default_rng(0).integers(0, 61, (2, 300)), tf.int32)
    full = model(tokens)["logits"].numpy()

    @tf.function(jit_compile=True, autograph=False)
    def decode_all(tokens):
        def body(i, cache, logits):
            # A static [2, 1] shape, as in real decoding: with the dynamic-size slice
            # tokens[:, i : i + 1], the XLA loop gave wrong logits from its second step on.
            token = tf.reshape(tokens[:, i], [2, 1])
            out = model(token, cache, i, logits_at=0)
            return i + 1, out["cache"], logits.write(i, out["logits"][:, 0])

        logits = tf.TensorArray(tf.float32, size=300)
        _, _, logits = tf.while_loop(
            lambda i, *_: i < 300, body, (0, model.init_cache(2, 300), logits)
        )
        return tf.transpose(logits.stack(), [1, 0, 2])

    diff = np.max(np.abs(decode_all(tokens).numpy() - full))
    assert diff < 1e-5, diff


def test_transposed_weights_compute_the_same_model():
    """transpose_weights (what gpt2_tf2.load does) keeps each conv1d weight as [nf, nx] in place
    of [1, nx, nf], not beside it, and the model computes the same logits to rounding (other
    kernels: kernels.transposed_product), eagerly and decoding under XLA."""
    a, b = GPT2(HP, seed=5), GPT2(HP, seed=5)
    assert b.transpose_weights() is b and b.transposed and not a.transposed
    assert len(b.variables) == len(a.variables)
    assert sum(v.shape.num_elements() for v in b.variables) == sum(
        v.shape.num_elements() for v in a.variables
    )
    assert not any(v.shape.rank == 3 for v in b.variables)
    assert b.h[0].attn.c_attn.w_t.shape == [3 * HP.n_embd, HP.n_embd]
    tokens = tf.constant(np.random.default_rng(3).integers(0, HP.n_vocab, (2, 9)), tf.int32)
    full = a(tokens)["logits"].numpy()
    assert np.max(np.abs(b(tokens)["logits"].numpy() - full)) < 1e-6

    @tf.function(jit_compile=True, autograph=False)
    def step(tokens, cache, pos):
        out = b(tokens, cache, pos, weights=b.read_weights(cpu_matvec=True))
        return out["logits"], out["cache"]

    logits, cache = step(tokens[:, :4], b.init_cache(2, 12), tf.constant(0))
    steps = [logits.numpy()]
    for i in range(4, 9):
        logits, cache = step(tokens[:, i : i + 1], cache, tf.constant(i))
        steps.append(logits.numpy())
    assert np.max(np.abs(np.concatenate(steps, axis=1) - full)) < 1e-5
    with pytest.raises(UserError, match="transposed for inference"):
        b.named_variables()


@pytest.mark.parametrize("rows", [3, 600])
def test_transposed_product_every_spelling(rows):
    """kernels.transposed_product picks its spelling by place and row count (few rows and many
    outside XLA, a static or an unknown count, and under XLA): each gives rows x w_t^T."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 5)).astype(np.float32)
    w_t = rng.standard_normal((8, 5)).astype(np.float32)
    want = x.astype(np.float64) @ w_t.T.astype(np.float64)
    unknown = tf.function(  # autograph off, as the library traces it (and as coverage sees it)
        lambda a, b: transposed_product(a, b, many=16),
        input_signature=[tf.TensorSpec([None, 5]), tf.TensorSpec([8, 5])],
        autograph=False,
    )
    compiled = tf.function(lambda a, b: transposed_product(a, b, many=16), jit_compile=True)
    for got in (transposed_product(x, w_t, many=16), unknown(x, w_t), compiled(x, w_t)):
        assert got.shape == (rows, 8)
        assert np.max(np.abs(got.numpy() - want)) < 1e-5


def test_load_transposes_where_measured_faster(tmp_path, monkeypatch):
    """kernels.transposed_weights_faster, which decides GPT2.as_loaded: transposed on an x86 CPU
    without AVX-512 (measured faster there), OpenAI's layout with AVX-512 (measured slower), on
    GPUs and wherever the CPU's flags cannot be read."""
    from gpt2_tf2.core.kernels import transposed_weights_faster

    model = GPT2(HP, seed=1)
    assert model.as_loaded() is model
    assert model.transposed == transposed_weights_faster()  # this machine's answer
    gpus = []  # the CPU's rule below, whether or not this machine has a GPU
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus)

    def cpuinfo(text):
        path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
        path.write_text(text)
        return str(path)

    head = "processor\t: 0\nmodel name\t: AMD EPYC\n"
    assert transposed_weights_faster(cpuinfo(head + "flags\t\t: fpu sse2 avx avx2 fma\n"))
    assert not transposed_weights_faster(cpuinfo(head + "flags\t\t: avx2 fma avx512f avx512bw\n"))
    assert not transposed_weights_faster(cpuinfo(head + "Features\t: fp asimd\n"))  # no x86 flags
    assert not transposed_weights_faster(cpuinfo(head))
    assert not transposed_weights_faster(str(tmp_path / "missing"))
    without_avx512 = cpuinfo(head + "flags\t\t: avx2 fma\n")
    assert transposed_weights_faster(without_avx512)
    gpus.append("a GPU")
    assert not transposed_weights_faster(without_avx512)


@pytest.mark.parametrize("xla", [False, True])
def test_first_argmax_is_numpys_argmax(xla):
    """The whole-row draw's argmax (two reductions under XLA): the first largest value's
    index, as NumPy's, with ties, -inf rows and ops fused into it; NaN ignored (np.nanargmax)."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 50257)).astype(np.float32)
    rows[1] = np.round(rows[1])  # ties: the first of them
    rows[2, ::3] = -np.inf
    rows[3] = -np.inf  # every token banned: index 0, as tf.argmax
    rows[4, [5, 70, 50000]] = 9.0
    rows[5, 123] = np.inf
    rows[6, [3, 40000]] = np.nan

    def argmax(x):  # a producer fused into the reduction, as the Gumbel noise is
        return first_argmax(x * 2.0 + 1.0)

    got = (tf.function(argmax, jit_compile=True) if xla else argmax)(tf.constant(rows)).numpy()
    want = [np.argmax(r) for r in rows[:6]] + [np.nanargmax(rows[6])]
    assert got.dtype == np.int32 and got.tolist() == want
