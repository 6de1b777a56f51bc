"""GPT-2's decode step in the form TensorFlow Lite runs fast: the same maths as `model.py`.

One call takes new tokens [batch, n] standing at columns pos .. pos + n - 1 and the key/value
cache of the columns before them, and returns the logits at the asked positions and the new
tokens' keys and values only. The caller keeps the cache (in the interpreter's own input
buffers, `generation.tflite`) and writes the new columns into it: TFLite has no in-place update of
an input, and returning the whole cache copied it at every step.

Three spellings differ from `model.py`, for TFLite, with the same results:
- Weights are stored [out, in] and multiplied with `transpose_b=True`: TFLite's FULLY_CONNECTED
  takes [out, in]; from our conv1d layout [in, out] the converter added a TRANSPOSE of every
  weight at every step (measured on 124M's 48 block matrices at batch 1, int8: 13.8 -> 5.05 ms).
- Attention scores the cache and the new keys separately and takes one softmax over both
  (`attend`), so the cache is only read: writing the new keys into a copy of it first cost a
  copy of every layer's cache per token.
- Every shape and mask is built once a step, from (batch, n, T) (`step`), not from each block's
  input: TFLite runs shape arithmetic outside XNNPACK, an operator at a time, and per block it
  was a third of the step (124M: 941 -> 620 operators; int4's step 1.13x at batch 1, 1.19x at
  8, docs/benchmarks/ab-tflite-step.md).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.core.layout import part_layers  # noqa: F401 (tflite_step.part_layers: its name before)
from gpt2_tf2.core.model import MASK_VALUE, gelu, layer_norm

DENSE = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")


def lite_layout(name: str, value) -> np.ndarray:
    """A weight by its OpenAI name as the step stores it, float32: a conv1d weight [1, in, out]
    becomes [out, in], the rest stays as it is."""
    value = np.asarray(value, np.float32)
    if name.endswith("/w") and value.ndim == 3:
        value = np.ascontiguousarray(value[0].T)  # [in, out] -> [out, in]
    return value


def dense(x, w, b):
    """x [rows, in] times w [out, in] (transposed, as FULLY_CONNECTED stores it), plus b."""
    return tf.matmul(x, w, transpose_b=True) + b  # [rows, out]


def masks(pos, first, n, width):
    """Which keys each new query sees, the same in every block: (over the cache [bh, 1, T]:
    columns first .. pos - 1, over the new keys [n, n]: key j <= query i). pos, first: int32
    [batch * heads, 1, 1] (`attend`); n: new columns; width: the cache's T."""
    columns = tf.range(width)
    rows = tf.range(n)
    return (columns < pos) & (columns >= first), rows[None, :] <= rows[:, None]


def attend(q, k, v, past_k, past_v, visible, split):
    """Causal attention of new queries over the cache and the new keys.

    q, k, v: [batch * heads, n, head_dim], the new columns pos .. pos + n - 1.
    past_k, past_v: [batch * heads, T, head_dim], read only where `visible` says (`masks`:
    a left-padded row's first real column to its own column; the rows of a decode engine stand
    at columns of their own). split: [T, n], the widths of the scores over the two.
    """
    old_visible, new_visible = visible
    scale = 1 / math.sqrt(q.shape[-1])
    old = tf.where(old_visible, tf.matmul(q, past_k, transpose_b=True) * scale, MASK_VALUE)
    new = tf.where(new_visible, tf.matmul(q, k, transpose_b=True) * scale, MASK_VALUE)
    probs = tf.nn.softmax(tf.concat([old, new], axis=-1), axis=-1)  # [bh, n, T + n]
    p_old, p_new = tf.split(probs, split, axis=-1)
    return tf.matmul(p_old, past_v) + tf.matmul(p_new, v)  # [bh, n, head_dim]


def block(x, w: dict, prefix: str, past_k, past_v, visible, dims, hp: HParams):
    """One transformer block on x [batch, n, embd]: (x, new keys, new values).

    dims: (batch, n, T) as int32 scalars, taken once a step (`step`): a shape built from them
    is the same tensor in every block, which the converter keeps once (module doc).
    """
    b, n, width = dims
    e, h, d = hp.n_embd, hp.n_head, hp.head_dim

    def p(name):
        return w[f"{prefix}/{name}"]

    # Layer norms on [batch, n, embd], then reshaped for the products: a layer norm feeding a
    # FULLY_CONNECTED directly, the converter folded its gain and bias into the weights, which
    # the template's stand-ins must reach unchanged (`tflite_template`).
    x_ln = layer_norm(x, p("ln_1/g"), p("ln_1/b"), hp.layer_norm_epsilon)
    c = dense(tf.reshape(x_ln, [-1, e]), p("attn/c_attn/w"), p("attn/c_attn/b"))  # [b*n, 3e]
    c = tf.reshape(c, [b, n, 3, h, d])  # [batch, n, (q, k, v), heads, head_dim]
    c = tf.transpose(c, [2, 0, 3, 1, 4])  # [3, batch, heads, n, head_dim]
    q, k, v = tf.unstack(tf.reshape(c, [3, b * h, n, d]))  # [batch * heads, n, head_dim] each
    a = attend(q, k, v, past_k, past_v, visible, [width, n])  # [batch * heads, n, head_dim]
    a = tf.transpose(tf.reshape(a, [b, h, n, d]), [0, 2, 1, 3])  # [batch, n, heads, head_dim]
    a = dense(tf.reshape(a, [-1, e]), p("attn/c_proj/w"), p("attn/c_proj/b"))  # [b*n, e]
    x = x + tf.reshape(a, [b, n, e])
    m = tf.reshape(layer_norm(x, p("ln_2/g"), p("ln_2/b"), hp.layer_norm_epsilon), [-1, e])
    m = dense(
        gelu(dense(m, p("mlp/c_fc/w"), p("mlp/c_fc/b"))), p("mlp/c_proj/w"), p("mlp/c_proj/b")
    )
    return x + tf.reshape(m, [b, n, e]), k, v


def step(w: dict, hp: HParams, tokens, pos, offsets, logits_at, past: list, layers=None, x=None):
    """The decode step: (logits [batch, len(logits_at), vocab], [new k, new v per layer]).

    tokens: int32 [batch, n], row b's at columns pos[b] .. pos[b] + n - 1 (pos: int32 [batch],
    or [1] for every row); offsets: int32 [batch], row b's first real column (its left padding
    before it is never attended to, and its token in column c stands at position c - offsets[b],
    as `GPT2.__call__`); logits_at: int32 [k], the positions of `tokens` whose logits are
    wanted; past: per layer keys then values, [batch * heads, T, head_dim] each, valid in
    columns offsets[b] .. pos[b] - 1.

    A part of the step: `layers` (first, end) runs only those blocks, from the hidden state `x`
    [batch, n, embd] instead of tokens when first > 0, and returns the hidden state instead of
    logits when end < n_layer (`part_layers`: a large model loads in parts).
    """
    first_layer, end = layers or (0, hp.n_layer)
    b = tf.shape(offsets)[0]
    n = tf.shape(tokens if x is None else x)[1]
    dims = (b, n, tf.shape(past[0])[1])
    pos = tf.broadcast_to(pos, [b])  # [batch]: [1] is every row's
    if x is None:
        columns = pos[:, None] + tf.range(n)[None, :]  # [batch, n]
        positions = tf.maximum(columns - offsets[:, None], 0)
        x = tf.gather(w["model/wte"], tokens) + tf.gather(w["model/wpe"], positions)  # [b, n, e]
    first = tf.reshape(tf.repeat(offsets, hp.n_head), [-1, 1, 1])  # [batch * heads, 1, 1]
    pos = tf.reshape(tf.repeat(pos, hp.n_head), [-1, 1, 1])
    visible = masks(pos, first, n, dims[2])
    new = []
    for j, i in enumerate(range(first_layer, end)):
        x, k, v = block(x, w, f"model/h{i}", past[2 * j], past[2 * j + 1], visible, dims, hp)
        new += [k, v]
    if end < hp.n_layer:
        return x, new
    x = layer_norm(x, w["model/ln_f/g"], w["model/ln_f/b"], hp.layer_norm_epsilon)
    x = tf.gather(x, logits_at, axis=1)  # [batch, k, embd]
    out = w.get("model/lm_head", w["model/wte"])  # [vocab, embd]: tied to wte in GPT-2
    logits = tf.matmul(tf.reshape(x, [-1, hp.n_embd]), out, transpose_b=True)  # [b * k, vocab]
    return tf.reshape(logits, [b, -1, hp.n_vocab]), new


def step_module(w: dict, hp: HParams, batch: int | None = None, layers=None) -> tf.Module:
    """A module holding the weights `w` (tf.Variables by name, in `lite_layout`) whose
    `decode_step` is `step` as a tf.function with named inputs (tokens, pos [batch] or [1], offsets,
    logits_at, past_key_i, past_value_i) and outputs (logits, key_i, value_i): what the
    converter takes, as a SavedModel signature (`formats.tflite`). Every length is dynamic (the
    caller resizes the inputs). A part (`layers`) takes `x` [batch, n, embd] for tokens after
    the first blocks, and gives `x` for logits before the last ones."""
    first_layer, end = layers or (0, hp.n_layer)
    module = tf.Module()
    module.weights = w
    shapes = {"pos": [None], "offsets": [batch]}
    if first_layer == 0:
        shapes["tokens"] = [batch, None]
    if end == hp.n_layer:
        shapes["logits_at"] = [None]
    specs = {name: tf.TensorSpec(shape, tf.int32, name=name) for name, shape in shapes.items()}
    if first_layer > 0:
        specs["x"] = tf.TensorSpec([batch, None, hp.n_embd], tf.float32, name="x")
    for i in range(first_layer, end):
        for kind in ("key", "value"):
            name = f"past_{kind}_{i}"  # [batch * heads, T, head_dim]
            specs[name] = tf.TensorSpec([None, None, hp.head_dim], tf.float32, name=name)

    @tf.function(input_signature=[specs], autograph=False)
    def decode_step(inputs):
        past = [
            inputs[f"past_{kind}_{i}"] for i in range(first_layer, end) for kind in ("key", "value")
        ]
        args = (inputs.get("tokens"), inputs["pos"], inputs["offsets"], inputs.get("logits_at"))
        out_x, new = step(module.weights, hp, *args, past, (first_layer, end), inputs.get("x"))
        out = {"logits" if end == hp.n_layer else "x": out_x}
        for j, i in enumerate(range(first_layer, end)):
            out[f"key_{i}"], out[f"value_{i}"] = new[2 * j], new[2 * j + 1]
        return out

    module.decode_step = decode_step
    return module
