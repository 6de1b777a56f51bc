"""OpenAI's names and shapes of GPT-2's weights for given hparams, and which of them a part of
the blocks reads: plain Python, no model built and no TensorFlow imported (a cached TFLite
conversion is found and sized with these before TensorFlow is needed, `formats.tflite`).

The model's own name table (`formats.openai.name_table`) is the source of truth; a test keeps
`weight_shapes` equal to it."""

from __future__ import annotations

from gpt2_tf2.core.hparams import HParams


def weight_shapes(hp: HParams) -> dict[str, list[int]]:
    """Every variable's TF1 name and shape for these hparams, without building the model (the
    shapes `name_table` of a model with these hparams holds)."""
    e = hp.n_embd
    shapes = {"model/wte": [hp.n_vocab, e], "model/wpe": [hp.n_ctx, e]}
    block = {
        "ln_1/g": [e], "ln_1/b": [e], "attn/c_attn/w": [1, e, 3 * e], "attn/c_attn/b": [3 * e],
        "attn/c_proj/w": [1, e, e], "attn/c_proj/b": [e], "ln_2/g": [e], "ln_2/b": [e],
        "mlp/c_fc/w": [1, e, 4 * e], "mlp/c_fc/b": [4 * e], "mlp/c_proj/w": [1, 4 * e, e],
        "mlp/c_proj/b": [e],
    }  # fmt: skip
    for i in range(hp.n_layer):
        shapes.update({f"model/h{i}/{name}": shape for name, shape in block.items()})
    shapes.update({"model/ln_f/g": [e], "model/ln_f/b": [e]})
    if not hp.tie_word_embeddings:
        shapes["model/lm_head"] = [hp.n_vocab, e]
    return shapes


def is_block(name: str) -> bool:
    return name.startswith("model/h") and name.split("/")[1][1:].isdigit()


def part_layers(hp: HParams, parts: int) -> list[tuple[int, int]]:
    """The blocks of each of `parts` parts, as even as they split: [(first, end), ...]."""
    parts = max(1, min(parts, hp.n_layer))
    edges = [round(i * hp.n_layer / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def needed(name: str, hp: HParams, layers) -> bool:
    """Whether the part of the step running blocks `layers` (first, end) reads weight `name`."""
    first, end = layers
    if is_block(name):
        return first <= int(name.split("/")[1][1:]) < end
    if name in ("model/wte", "model/wpe") and first == 0:
        return True  # the embedding
    return end == hp.n_layer and name != "model/wpe"  # the final norm and the output layer
