"""GPT-2's initialisation of a new model, for training from scratch.

Every weight normal(0, 0.02) as in openai/gpt-2's `src/model.py` (position embeddings 0.01, as
there), biases zero, layer-norm gains one; and, as the GPT-2 paper describes (Radford et al. 2019,
sec. 2.3: "we scale the weights of residual layers at initialization by a factor of 1/sqrt(N)
where N is the number of residual layers"), the two projections that write into the residual
stream in each block (`attn/c_proj`, `mlp/c_proj`; N = 2 * n_layer) have 0.02 / sqrt(2 * n_layer).
The released code never did this (its checkpoints were trained already); minGPT and nanoGPT do.
"""

from __future__ import annotations

import math

import tensorflow as tf

RESIDUAL = ("attn/c_proj/w", "mlp/c_proj/w")  # the layers that add into the residual stream


def stddevs(model) -> dict[str, float | str]:
    """Each variable's initial value by its OpenAI name: a normal's stddev, or 'zeros'/'ones'."""
    n_layer = model.hparams.n_layer
    table: dict[str, float | str] = {"model/wte": 0.02, "model/wpe": 0.01}
    for i, block in enumerate(model.h):
        for name in block.params():
            if name.endswith("/g"):
                rule = "ones"
            elif name.endswith("/b"):
                rule = "zeros"
            elif name.endswith(RESIDUAL):
                rule = 0.02 / math.sqrt(2 * n_layer)
            else:
                rule = 0.02
            table[f"model/h{i}/{name}"] = rule
    table.update({"model/ln_f/g": "ones", "model/ln_f/b": "zeros"})
    if model.lm_head is not None:  # an untied output layer, initialised as wte is
        table["model/lm_head"] = 0.02
    return table


def initialize(model, seed: int = 0) -> None:
    """Assign every variable of `model` its GPT-2 initial value, reproducibly from `seed`."""
    gen = tf.random.Generator.from_seed(seed)
    rules = stddevs(model)
    table = model.named_variables()
    if set(rules) != set(table) or len(table) != len(model.variables):
        raise AssertionError("initialize must give every model variable exactly one rule")
    for name in sorted(table):  # a fixed order: the same seed gives the same model
        var, rule = table[name], rules[name]
        if rule == "ones":
            value = tf.ones(var.shape)
        elif rule == "zeros":
            value = tf.zeros(var.shape)
        else:
            value = gen.normal(var.shape, stddev=rule)
        var.assign(tf.cast(value, var.dtype))
