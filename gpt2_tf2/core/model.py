"""GPT-2 as eager `tf.Variable`s, numerically identical to openai/gpt-2's `src/model.py` in float32.

Same maths and variable layout as the original (Radford et al. 2019; pre-LN transformer of
Vaswani et al. 2017): tanh-approximate GELU, layer norm with epsilon 1e-5, conv1d weights of shape
`[1, nx, nf]`, attention logits masked to -1e10, output projection tied to `wte`. Two
additions: dropout for training (`Dropout`; the original has none, its training code being
unreleased), and a preallocated, fixed-shape key/value cache written in place at `pos`, so a
whole generation compiles to one loop whose shapes never change. For inference on the CPUs where
that decodes faster, `gpt2_tf2.load` keeps the conv1d weights as `[nf, nx]` instead
(`GPT2.as_loaded`), the same maths. This file knows nothing of files, command lines or sampling;
what only a compiler or device needs lives in `kernels.py`.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from gpt2_tf2.core import kernels
from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.core.kernels import (
    add_bias,
    in_xla,
    shape_list,
    transposed_product,
    update_rows,
    update_slice,
)
from gpt2_tf2.errors import UserError

MASK_VALUE = -1e10  # the original's value for masked attention logits (float32)


def gelu(x):
    # Hendrycks & Gimpel 2016, tanh approximation, exactly as the original writes it.
    return 0.5 * x * (1 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def layer_norm(x, g, b, epsilon):
    dtype, x = x.dtype, tf.cast(x, tf.float32)  # statistics in float32 at any compute dtype
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    g, b = tf.cast(g, tf.float32), tf.cast(b, tf.float32)
    return tf.cast((x - u) * tf.math.rsqrt(s + epsilon) * g + b, dtype)


def conv1d(x, w, b, cpu_matvec: bool = False, transposed: bool = False):
    """The original's `conv1d`: a dense layer whose weight has the TF1 shape [1, nx, nf].

    `w` may also come as [nx, nf], read once before a decoding loop (`GPT2.read_weights`), and
    only then `cpu_matvec` may pick the CPU's faster bias spelling (`kernels.add_bias`): reshaped
    inside the loop, XLA fused the reshape into the product instead, 10x slower.
    `transposed`: `w` is [nf, nx], the inference layout of `Conv1D.transpose`.
    """
    read_before = w.shape.rank == 2  # [nx, nf] or [nf, nx]: read before a loop (read_weights)
    if transposed:
        nf, nx = w.shape
    else:
        nx, nf = w.shape[-2:]
        w = tf.reshape(w, [nx, nf])
    # A 2-D matmul, as the original: einsum("...i,io->...o") has a gradient that TF computes
    # through a broadcast outer product (measured: 70x slower, 4x the memory at 124M).
    rows, w = tf.reshape(x, [-1, nx]), tf.cast(w, x.dtype)
    if not transposed:
        out = tf.matmul(rows, w)
    else:
        out = transposed_product(rows, w)
    out = add_bias(out, b, cpu_matvec and read_before)  # [batch * seq, nf]
    return tf.reshape(out, shape_list(x)[:-1] + [nf])  # [batch, seq, nf]


class LayerNorm(tf.Module):
    def __init__(self, n_state: int, epsilon: float, name: str, dtype=tf.float32):
        super().__init__(name=name.replace("/", "_"))
        self.g = tf.Variable(tf.ones([n_state], dtype), name=f"{name}/g")
        self.b = tf.Variable(tf.zeros([n_state], dtype), name=f"{name}/b")
        self.epsilon = epsilon

    def __call__(self, x):
        return layer_norm(x, self.g, self.b, self.epsilon)


class Conv1D(tf.Module):
    """A conv1d's weight `w` [1, nx, nf] and bias `b`; after `transpose()`, `w_t` [nf, nx]."""

    def __init__(self, nx: int, nf: int, name: str, init):
        super().__init__(name=name.replace("/", "_"))
        self.name_ = name
        self.w = tf.Variable(init([1, nx, nf], 0.02), name=f"{name}/w")
        self.b = tf.Variable(init([nf], None), name=f"{name}/b")  # init gives zeros for biases

    def transpose(self) -> None:
        """Keep the weight as w_t [nf, nx] instead (freeing w): the layout in which XLA's CPU
        matrix products read it fastest (`GPT2.transpose_weights`)."""
        if hasattr(self, "w"):
            w = self.w
            self.w_t = tf.Variable(tf.transpose(w[0]), name=f"{self.name_}/w_t")
            del self.w, w

    def __call__(self, x):
        if hasattr(self, "w_t"):
            return conv1d(x, self.w_t, self.b, transposed=True)
        return conv1d(x, self.w, self.b)


def weight_key(p, name: str) -> str:
    """The key of the conv1d `name`'s weight in the tensors `p`: `{name}/w` [1, nx, nf] or
    [nx, nf], or `{name}/w_t` [nf, nx] (`Conv1D.transpose`)."""
    return f"{name}/w_t" if f"{name}/w_t" in p else f"{name}/w"


def split_heads(x, n_head: int):
    b, t, e = shape_list(x)
    x = tf.reshape(x, [b, t, n_head, e // n_head])  # [batch, seq, heads, head_dim]
    return tf.transpose(x, [0, 2, 1, 3])  # [batch, heads, seq, head_dim]


def merge_heads(x):
    b, h, t, d = shape_list(x)
    x = tf.transpose(x, [0, 2, 1, 3])  # [batch, seq, heads, head_dim]
    return tf.reshape(x, [b, t, h * d])  # [batch, seq, embd]


def per_row(pos) -> bool:
    """Whether `pos` gives each row its own position (an int32 [batch] tensor), not one for all
    (a Python int or a scalar tensor)."""
    return getattr(pos, "shape", None) is not None and pos.shape.rank == 1


def write_cache(cache, x, pos):
    """Write `x` [batch * heads, n, head_dim] into `cache` [batch * heads, T, head_dim].

    The new entries land at positions pos .. pos + n - 1 and the cache keeps its shape, so a
    generation is one loop whose shapes never change (in place under XLA: `kernels.update_slice`).
    pos [batch * heads]: each row at its own position (`kernels.update_rows`).
    """
    if per_row(pos):
        return update_rows(cache, x, pos)
    return update_slice(cache, x, pos)


def attention_probs(q, k, pos, first=None):
    """softmax(q k^T / sqrt(d)) under the causal mask, float32 [..., n, T]: how much query i (at
    column pos + i) attends to key j <= pos + i. q: [..., n, head_dim]; k: [..., T, head_dim].
    `first` (int32, q's leading dims then [1, 1]): each row's first real column; the left padding
    of a mixed-length batch before it is masked too. `pos`: an int32 scalar, or one position per
    row of q's single leading dim (the slots of a decode engine, `GPT2.__call__`)."""
    w = tf.matmul(q, k, transpose_b=True)  # [..., n, T]
    # Scores, mask and softmax in float32: -1e10 would overflow float16.
    w = tf.cast(w, tf.float32) * (1 / math.sqrt(shape_list(k)[-1]))
    columns = tf.range(shape_list(k)[-2])
    queries = tf.range(shape_list(q)[-2])
    if per_row(pos):  # each row at its own position: [rows, n, T]
        visible = columns <= pos[:, None, None] + queries[None, :, None]
    else:
        visible = columns[None, :] <= (pos + queries)[:, None]  # [n, T]
    if first is not None:
        visible = visible & (columns >= first)  # [..., n, T]
    w = tf.where(visible, w, MASK_VALUE)
    return tf.nn.softmax(w, axis=-1)


def causal_attention(q, k, v, pos, first=None):
    """softmax(q k^T / sqrt(d)) v; query i sits at column pos + i and sees keys j <= pos + i
    (and j >= first, if given: `attention_probs`).

    q: [..., n, head_dim]; k, v: [..., T, head_dim], with the same leading (batch, head) dims.
    """
    probs = attention_probs(q, k, pos, first)
    return tf.matmul(tf.cast(probs, v.dtype), v)  # [..., n, head_dim]


CAUSAL_BLOCKS = 4  # query blocks for long sequences without a cache


class Dropout:
    """Dropout (Srivastava et al. 2014) for training, where GPT-2's released configuration puts
    it (Hugging Face's `embd_pdrop`, `resid_pdrop`): on the embeddings and on each block's two
    residual branches. Attention weights are not dropped (`attn_pdrop`): that mask would be as
    large as every layer's attention matrix, drawn at every step. Stateless: the masks are a
    function of `seed` (int64 [2]) and the site, so a step is reproducible and a block recomputed
    in the backward pass (`recompute`) draws the masks it drew forward."""

    def __init__(self, rate: float, seed):
        self.rate, self.seed = rate, seed

    def __call__(self, x, site: int):
        seed = tf.random.experimental.stateless_fold_in(self.seed, site)
        return tf.nn.experimental.stateless_dropout(x, self.rate, seed)

    def layer(self, i: int) -> Dropout:
        """The dropout of block i: its own masks."""
        return Dropout(self.rate, tf.random.experimental.stateless_fold_in(self.seed, i + 1))


def keep(x, site: int):
    """No dropout: what `block` applies when it is not given a `Dropout`."""
    del site
    return x


def dense(x, p, name: str, cpu_matvec: bool = False):
    """The conv1d named `name` in the tensors `p` (`attn/c_attn`, `mlp/c_fc`, ...)."""
    key = weight_key(p, name)
    return conv1d(x, p[key], p[f"{name}/b"], cpu_matvec, transposed=key.endswith("_t"))


def attention(x, p, cache, pos, n_head: int, cpu_matvec: bool = False, offsets=None):
    """Masked multi-head self-attention; `p` holds attn/c_attn/{w,b} and attn/c_proj/{w,b}.
    `offsets` (int32 [batch]): each row's left padding, never attended to (`GPT2.__call__`)."""
    c = dense(x, p, "attn/c_attn", cpu_matvec)  # [batch, seq, 3 * embd]
    q, k, v = (split_heads(part, n_head) for part in tf.split(c, 3, axis=2))
    n = shape_list(q)[2]
    first = None if offsets is None else offsets[:, None, None, None]  # [batch, 1, 1, 1]
    if cache is not None:
        # Keys and values live in two tensors of the shape attention reads them in: slicing them
        # out of one stacked tensor, or reshaping them, made XLA copy the whole cache of every
        # layer at every step (measured at 124M, batch 1: 1 ms of a 16 ms step at 144 slots).
        b, h, _, d = shape_list(q)
        q, k, v = (tf.reshape(x, [b * h, n, d]) for x in (q, k, v))  # [batch * heads, n, head_dim]
        if per_row(pos):  # a position per row: per row and head
            pos = tf.repeat(pos, h)
        cache = tuple(write_cache(c, x, pos) for c, x in zip(cache, (k, v)))
        if first is not None:
            first = tf.reshape(tf.repeat(offsets, h), [b * h, 1, 1])  # [batch * heads, 1, 1]
        a = causal_attention(q, *cache, pos, first)  # [batch * heads, n, head_dim]
        a = tf.reshape(a, [b, h, n, d])  # [batch, heads, n, head_dim]
    elif isinstance(n, int) and n >= 256:
        # A block of queries needs the keys up to its own end only: skipping the fully masked
        # blocks saves 3/8 of the attention work and memory at 4 blocks (training, scoring).
        bounds = [n * i // CAUSAL_BLOCKS for i in range(CAUSAL_BLOCKS + 1)]
        a = tf.concat(
            [
                causal_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], pos + s, first)
                for s, e in zip(bounds, bounds[1:])
            ],
            axis=2,
        )  # [batch, heads, seq, head_dim]
    else:
        a = causal_attention(q, k, v, pos, first)
    return dense(merge_heads(a), p, "attn/c_proj", cpu_matvec), cache


def mlp(x, p, cpu_matvec: bool = False):
    return dense(gelu(dense(x, p, "mlp/c_fc", cpu_matvec)), p, "mlp/c_proj", cpu_matvec)


def block(x, p, cache, pos, n_head: int, epsilon: float, cpu_matvec=False, offsets=None, drop=keep):
    """One transformer block (pre-LN) on the tensors `p`, named as in `Block.params()`;
    `drop` (a `Dropout`, when training) on the two residual branches."""
    x_ln = layer_norm(x, p["ln_1/g"], p["ln_1/b"], epsilon)
    a, cache = attention(x_ln, p, cache, pos, n_head, cpu_matvec, offsets)
    x = x + drop(a, 0)
    return x + drop(mlp(layer_norm(x, p["ln_2/g"], p["ln_2/b"], epsilon), p, cpu_matvec), 1), cache


def weights_of(layer: Conv1D) -> tuple[str, str]:
    return ("w_t", "b") if hasattr(layer, "w_t") else ("w", "b")


class Block(tf.Module):
    """Holds one block's variables (under their TF1 names); the maths is `block()`."""

    def __init__(self, hparams: HParams, name: str, init):
        super().__init__(name=name.replace("/", "_"))
        eps, dtype, e = hparams.layer_norm_epsilon, init.dtype, hparams.n_embd
        self.n_head, self.epsilon = hparams.n_head, eps
        self.ln_1 = LayerNorm(e, eps, f"{name}/ln_1", dtype)
        self.attn = tf.Module(name="attn")
        self.attn.c_attn = Conv1D(e, 3 * e, f"{name}/attn/c_attn", init)
        self.attn.c_proj = Conv1D(e, e, f"{name}/attn/c_proj", init)
        self.ln_2 = LayerNorm(e, eps, f"{name}/ln_2", dtype)
        self.mlp = tf.Module(name="mlp")
        self.mlp.c_fc = Conv1D(e, 4 * e, f"{name}/mlp/c_fc", init)
        self.mlp.c_proj = Conv1D(4 * e, e, f"{name}/mlp/c_proj", init)

    def params(self) -> dict:
        """The block's variables by their TF1 names below `model/hN/` (checkpoint.name_table)."""
        layers = {
            "ln_1": self.ln_1,
            "attn/c_attn": self.attn.c_attn,
            "attn/c_proj": self.attn.c_proj,
            "ln_2": self.ln_2,
            "mlp/c_fc": self.mlp.c_fc,
            "mlp/c_proj": self.mlp.c_proj,
        }
        return {
            f"{name}/{attr}": getattr(layer, attr)
            for name, layer in layers.items()
            for attr in (("g", "b") if isinstance(layer, LayerNorm) else weights_of(layer))
        }

    def __call__(self, x, cache=None, pos=0, offsets=None, drop=keep):
        p = self.params()
        return block(x, p, cache, pos, self.n_head, self.epsilon, offsets=offsets, drop=drop)


def _initializer(seed, dtype):
    """The original's init: normal with `stddev` (0.02, wpe 0.01), zeros for biases (stddev None).

    seed None: all zeros, for a model about to be loaded. `init.dtype` is the variables' dtype.
    """
    gen = None if seed is None else tf.random.Generator.from_seed(seed)

    def init(shape, stddev):
        if gen is None or stddev is None:
            return tf.zeros(shape, dtype)
        return tf.cast(gen.normal(shape, stddev=stddev), dtype)

    init.dtype = dtype
    return init


class GPT2(tf.Module):
    """The GPT-2 language model. Variables are named exactly as in OpenAI's checkpoints."""

    def __init__(
        self,
        hparams: HParams,
        seed: int | None = 0,
        compute_dtype=tf.float32,
        param_dtype=tf.float32,
    ):
        super().__init__(name="model")
        self.hparams = hparams
        # Activations, matmuls and the cache use compute_dtype (bfloat16/float16 for mixed
        # precision or low-precision inference), while layer norms, softmax and logits are float32.
        # Variables are float32 for training; for inference they may be stored in compute_dtype
        # (param_dtype), so that the weights are cast once, at load, and take half the memory.
        self.compute_dtype = tf.as_dtype(compute_dtype)
        init = _initializer(seed, tf.as_dtype(param_dtype))
        self.wte = tf.Variable(init([hparams.n_vocab, hparams.n_embd], 0.02), name="model/wte")
        self.wpe = tf.Variable(init([hparams.n_ctx, hparams.n_embd], 0.01), name="model/wpe")
        self.lm_head = None  # GPT-2's logits use wte; a converted model may bring its own
        self.transposed = False  # conv1d weights kept as [nf, nx] (transpose_weights)
        if not hparams.tie_word_embeddings:
            shape = [hparams.n_vocab, hparams.n_embd]
            self.lm_head = tf.Variable(init(shape, 0.02), name="model/lm_head")
        self.h = [Block(hparams, f"model/h{i}", init) for i in range(hparams.n_layer)]
        shared = functools.partial(block, n_head=hparams.n_head, epsilon=hparams.layer_norm_epsilon)

        def shared_block(h, params, cache, pos, cpu_matvec, xla, offsets):
            # `xla` (whether the caller is being compiled) only keys the trace: a trace made in
            # a plain graph picks the non-XLA kernels and must not be reused under XLA, where
            # they do not compile (and the other way round); tf.function's cache alone mixed
            # them when one model served both kinds of decoding loop.
            del xla
            return shared(h, params, cache, pos, cpu_matvec=cpu_matvec, offsets=offsets)

        self._shared_block = tf.function(shared_block, autograph=False)
        self.ln_f = LayerNorm(
            hparams.n_embd, hparams.layer_norm_epsilon, "model/ln_f", tf.as_dtype(param_dtype)
        )

    def transpose_weights(self) -> GPT2:
        """Keep every conv1d weight as [nf, nx] (`Conv1D.transpose`), one at a time (memory
        grows by one matrix, never by the model), and return the model. For inference only:
        the model then computes the same functions, but has no OpenAI names to save or train
        under (`named_variables` refuses). Why: XLA on a CPU multiplies activations by a
        weight read along its rows faster (the output layer, wte [vocab, embd], is read so
        already): at 124M sampling 1.13x at batch 1 and 1.07x at batch 8, a decode step
        1.16x, beam search 1.14x on a CPU without AVX-512; slower on one with it, where `load`
        keeps OpenAI's layout (`as_loaded`, docs/benchmarks/ab-transposed-weights.md)."""
        for block in self.h:
            for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                layer.transpose()
        self.transposed = True
        return self

    def as_loaded(self) -> GPT2:
        """The model as `gpt2_tf2.load` keeps it for inference: `transpose_weights()` on the
        machines where decoding reads the weights faster so (`kernels.transposed_weights_faster`),
        else as it is."""
        return self.transpose_weights() if kernels.transposed_weights_faster() else self

    def named_variables(self) -> dict[str, tf.Variable]:
        """Every variable by its name in OpenAI's checkpoints ("model/h0/attn/c_attn/w", ...)."""
        if self.transposed:
            raise UserError(
                "this model keeps its conv1d weights transposed for inference, as "
                "gpt2_tf2.load returns it, and has no OpenAI names to save, convert or train "
                "under; read the directory with gpt2_tf2.formats.load_model_dir for that"
            )
        table = {"model/wte": self.wte, "model/wpe": self.wpe}
        for i, block in enumerate(self.h):
            table.update({f"model/h{i}/{name}": var for name, var in block.params().items()})
        table.update({"model/ln_f/g": self.ln_f.g, "model/ln_f/b": self.ln_f.b})
        if self.lm_head is not None:
            table["model/lm_head"] = self.lm_head
        return table

    def _positions(self, tokens, pos, offsets):
        """Position embeddings of tokens [batch, seq] in columns pos .. pos + seq - 1:
        [1, seq, embd], or [batch, seq, embd] with `offsets` (padding columns get position 0)."""
        if per_row(pos):  # a position per row (the slots of a decode engine)
            return tf.gather(self.wpe, pos[:, None] + tf.range(shape_list(tokens)[1]))
        columns = pos + tf.range(shape_list(tokens)[1])  # [seq]
        if offsets is None:
            return tf.gather(self.wpe, columns)[None]  # [1, seq, embd]
        positions = tf.maximum(columns[None, :] - offsets[:, None], 0)  # [batch, seq]
        return tf.gather(self.wpe, positions)  # [batch, seq, embd]

    def _output_weights(self, wte, weights=None):
        """[vocab, embd]: wte itself (GPT-2 ties them), or the model's own output layer."""
        if self.lm_head is None:
            return wte
        return weights["lm_head"] if weights else tf.convert_to_tensor(self.lm_head)

    def init_cache(self, batch_size: int, max_len: int):
        """Per layer, (keys, values): two zero tensors [batch * heads, max_len, head_dim]."""
        hp = self.hparams
        shape = [batch_size * hp.n_head, max_len, hp.head_dim]
        return [
            (tf.zeros(shape, self.compute_dtype), tf.zeros(shape, self.compute_dtype))
            for _ in range(hp.n_layer)
        ]

    def read_weights(self, cpu_matvec: bool = False) -> dict:
        """wte and the blocks' weights as tensors, conv1d weights as [nx, nf] (or as [nf, nx],
        `{name}/w_t`, after `transpose_weights`): for a compiled
        decoding loop to read once, before it starts, and pass to every step (`weights=`).
        Read and reshaped inside the loop, XLA on a CPU ran slower matrix-vector products.
        `cpu_matvec`: the loop runs on a CPU (`kernels.add_bias`); the caller decides."""

        def read(v):
            return tf.reshape(v, v.shape[1:]) if v.shape.rank == 3 else tf.convert_to_tensor(v)

        blocks = [{k: read(v) for k, v in layer.params().items()} for layer in self.h]
        weights = {"wte": tf.convert_to_tensor(self.wte), "h": blocks, "cpu_matvec": cpu_matvec}
        if self.lm_head is not None:
            weights["lm_head"] = tf.convert_to_tensor(self.lm_head)
        return weights

    def __call__(
        self,
        tokens,
        cache=None,
        pos=0,
        logits_at=None,
        recompute: bool = False,
        weights=None,
        offsets=None,
        dropout: Dropout | None = None,
    ):
        """Logits for int32 `tokens` [batch, seq] standing at positions pos .. pos + seq - 1.

        With `cache` (from `init_cache`), keys/values are written into it at `pos` and attention
        sees every earlier position in it; the updated cache is returned as `result["cache"]`.
        `logits_at` (an int32 scalar, or one index per row) computes the logits of that one
        position of `tokens` only, [batch, 1, vocab]: all that decoding needs.
        `recompute` (training, no cache) keeps only each block's input for the backward pass and
        recomputes the rest there (Chen et al. 2016), trading compute for activation memory.
        `weights` (from `read_weights`) replaces the variables when decoding in a graph.
        `offsets` (int32 [batch]): a batch of prompts of different lengths, left-padded to one
        length; row b's first offsets[b] columns are padding, never attended to, and its token
        in column c stands at position c - offsets[b], so that each row computes what it
        would alone (`pos` counts columns then).
        `dropout` (training, no cache): a `Dropout` on the embeddings and the residual branches.
        """
        # Read wte densely once per call: after a sparse read (gather), later dense reads of the
        # same resource variable copy it whole (measured: 7.6 -> 122 ms for the tied projection
        # at M=1).
        if not tf.is_tensor(tokens):  # NumPy arrays and lists of ints, as Keras users pass them
            tokens = tf.constant(tokens, tf.int32)
        wte = weights["wte"] if weights else tf.convert_to_tensor(self.wte)  # [vocab, embd]
        cpu_matvec = bool(weights and weights.get("cpu_matvec"))
        h = tf.cast(
            tf.gather(wte, tokens) + self._positions(tokens, pos, offsets), self.compute_dtype
        )
        if dropout is not None:
            h = dropout(h, 0)
        new_cache = []
        for i, layer in enumerate(self.h):
            drop = keep if dropout is None else dropout.layer(i)
            if recompute and cache is None:
                h = tf.recompute_grad(lambda x, f=layer, d=drop: f(x, offsets=offsets, drop=d)[0])(
                    h
                )
            elif cache is not None and not tf.executing_eagerly():
                # Decoding graphs call one traced function for all layers: tracing each layer
                # separately took most of the 2 s that tracing a 124M decode loop cost.
                if weights:
                    params = weights["h"][i]
                else:
                    params = {k: tf.convert_to_tensor(v) for k, v in layer.params().items()}
                h, layer_cache = self._shared_block(
                    h, params, cache[i], pos, cpu_matvec, in_xla(), offsets
                )
                new_cache.append(layer_cache)
            else:
                layer_cache = None if cache is None else cache[i]
                h, layer_cache = layer(h, layer_cache, pos, offsets, drop)
                new_cache.append(layer_cache)
        h = self.ln_f(h)
        if logits_at is not None:
            index = tf.broadcast_to(logits_at, shape_list(h)[:1])  # [batch]
            h = tf.gather(h, index[:, None], batch_dims=1)  # [batch, 1, embd]
        b, s, _ = shape_list(h)
        flat = tf.reshape(h, [-1, self.hparams.n_embd])  # [batch * seq, embd]
        logits = tf.matmul(
            flat, tf.cast(self._output_weights(wte, weights), h.dtype), transpose_b=True
        )
        logits = tf.reshape(tf.cast(logits, tf.float32), [b, s, self.hparams.n_vocab])  # [b, s, v]
        result = {"logits": logits}
        if cache is not None:
            result["cache"] = new_cache
        return result
