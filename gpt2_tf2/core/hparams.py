"""Model hyperparameters: OpenAI's `hparams.json`, as a frozen dataclass.

Mirrors `default_hparams()` in openai/gpt-2's `src/model.py`
(`n_vocab, n_ctx, n_embd, n_head, n_layer`).
Fields beyond OpenAI's five carry defaults equal to GPT-2's fixed choices and are written to
`hparams.json` only when they differ from them, so a file we write for a GPT-2 release is
byte-for-byte the five-key file OpenAI ships, while other families (e.g. ruGPT-3) can still
be described.
"""

from __future__ import annotations

import dataclasses
import json
import os

from gpt2_tf2.errors import UserError
from gpt2_tf2.files import read_json_object

# The original five fields, in the order OpenAI's files list them.
OPENAI_FIELDS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


# int4's block: inputs per float16 scale (llama.cpp's q4_0 blocks; XNNPACK takes multiples of
# 32), formats/tflite_template.BLOCK_SIZE.
INT4_BLOCK = 32
# Bytes a weight takes in memory, by dtype (int4: 4 bits and a float16 scale per block):
# memory estimates and conversions' sizes.
WEIGHT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int4": 0.5 + 2 / INT4_BLOCK}


@dataclasses.dataclass(frozen=True)
class HParams:
    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    # Extensions (not in OpenAI's files; defaults are GPT-2's hard-coded values).
    layer_norm_epsilon: float = 1e-5
    # GPT-2 computes logits with wte itself; a converted model may have its own output layer
    # (transformers' lm_head with tie_word_embeddings false), stored as model/lm_head.
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for name in OPENAI_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"hparams: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"hparams: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not isinstance(self.tie_word_embeddings, bool):
            raise UserError(
                f"hparams: tie_word_embeddings must be true or false, got "
                f"{self.tie_word_embeddings!r}"
            )
        if not self.layer_norm_epsilon > 0:
            raise UserError(
                f"hparams: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, data: dict, source: str = "hparams") -> HParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known keys: "
                f"{', '.join(sorted(known))}"
            )
        missing = [k for k in OPENAI_FIELDS if k not in data]
        if missing:
            raise UserError(f"{source}: missing key(s) {', '.join(missing)}")
        return cls(**data)

    def to_dict(self) -> dict:
        """OpenAI's five keys, plus any extension that differs from GPT-2's default."""
        out = {name: getattr(self, name) for name in OPENAI_FIELDS}
        for f in dataclasses.fields(self):
            if f.name not in out and getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        return out

    def num_params(self) -> int:
        """Parameter count from shapes alone (nothing is allocated)."""
        e = self.n_embd
        per_block = 12 * e * e + 13 * e  # ln_1, c_attn, attn c_proj, ln_2, c_fc, mlp c_proj
        head = 0 if self.tie_word_embeddings else self.n_vocab * e  # an untied output layer
        return self.n_vocab * e + self.n_ctx * e + self.n_layer * per_block + 2 * e + head


def load_hparams(path: str) -> HParams:
    """Read `hparams.json` (a file, or a directory holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "hparams.json")
    return HParams.from_dict(read_json_object(path), source=path)


def save_hparams(hparams: HParams, path: str) -> None:
    """Write `hparams.json` in OpenAI's formatting (two-space indent, as in the releases)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(hparams.to_dict(), f, indent=2)


# OpenAI's releases. 117M and 345M are the names the models had before they were re-counted.
PRESETS = {
    "124M": HParams(n_embd=768, n_head=12, n_layer=12),
    "355M": HParams(n_embd=1024, n_head=16, n_layer=24),
    "774M": HParams(n_embd=1280, n_head=20, n_layer=36),
    "1558M": HParams(n_embd=1600, n_head=25, n_layer=48),
}
ALIASES = {"117M": "124M", "345M": "355M"}


def canonical_name(model_name: str) -> str | None:
    """The release name for a preset or alias ('117M' -> '124M'), or None."""
    name = ALIASES.get(model_name, model_name)
    return name if name in PRESETS else None
