"""What attention looks at: every layer's and head's attention probabilities for one text.

For the attention view (`python -m gpt2_tf2.attention`), as tensor2tensor's visualisation and
bertviz show them. The forward pass is the model's own (`model.block` per layer); the
probabilities are `model.attention_probs` on the same queries and keys, read beside it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gpt2_tf2.core.model import attention_probs, block, dense, layer_norm, split_heads


def attention_maps(model, tokens) -> np.ndarray:
    """float32 [n_layer, n_head, seq, seq]: row i of a head's map is how token i's query
    spreads over tokens 0..i (it sums to 1; tokens after i get 0).

    Args:
      model: a `GPT2`.
      tokens: one sequence of token ids, at most n_ctx long.
    """
    hp = model.hparams
    ids = tf.constant([list(tokens)], tf.int32)  # [1, seq]
    seq = int(ids.shape[1])
    wte = tf.convert_to_tensor(model.wte)
    x = tf.gather(wte, ids) + tf.gather(model.wpe, tf.range(seq))[None]  # [1, seq, embd]
    x = tf.cast(x, model.compute_dtype)
    maps = []
    for layer in model.h:
        p = {name: tf.convert_to_tensor(v) for name, v in layer.params().items()}
        h = layer_norm(x, p["ln_1/g"], p["ln_1/b"], hp.layer_norm_epsilon)
        qkv = dense(h, p, "attn/c_attn")  # [1, seq, 3 * embd]
        q, k, _ = (split_heads(part, hp.n_head) for part in tf.split(qkv, 3, axis=2))
        maps.append(attention_probs(q, k, 0)[0])  # [heads, seq, seq]
        x, _ = block(x, p, None, 0, hp.n_head, hp.layer_norm_epsilon)
    return tf.stack(maps).numpy()  # [layers, heads, seq, seq]
