"""Hugging Face's GPT-2 layout (transformers' `GPT2LMHeadModel`) <-> OpenAI's, by one mapping.

A Hugging Face model directory holds `config.json`, the weights (`model.safetensors`, shards
listed by `model.safetensors.index.json`, or `pytorch_model.bin`) and the tokenizer: `vocab.json`
and `merges.txt` are GPT-2's `encoder.json` and `vocab.bpe` under other names; the special tokens
are named by `special_tokens_map.json`, `tokenizer_config.json` and `added_tokens.json`.

The maths is the same model: transformers' `Conv1D` keeps OpenAI's [nx, nf] weight (OpenAI's
checkpoint adds a leading 1), `c_attn` is the same fused q, k, v projection, `lm_head` is tied
to `wte` (or, with `tie_word_embeddings: false`, a layer of its own: our `model/lm_head`).
`hf_names` lists every tensor of a block and of the model once; a conversion uses each stored
tensor exactly once or names the one it cannot place.
"""

from __future__ import annotations

import json
import os

import numpy as np

from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.errors import UserError
from gpt2_tf2.files import read_json_object

# transformers' names (below "transformer.") -> OpenAI's (below "model/"), per block and global.
BLOCK_NAMES = {
    "ln_1.weight": "ln_1/g",
    "ln_1.bias": "ln_1/b",
    "attn.c_attn.weight": "attn/c_attn/w",
    "attn.c_attn.bias": "attn/c_attn/b",
    "attn.c_proj.weight": "attn/c_proj/w",
    "attn.c_proj.bias": "attn/c_proj/b",
    "ln_2.weight": "ln_2/g",
    "ln_2.bias": "ln_2/b",
    "mlp.c_fc.weight": "mlp/c_fc/w",
    "mlp.c_fc.bias": "mlp/c_fc/b",
    "mlp.c_proj.weight": "mlp/c_proj/w",
    "mlp.c_proj.bias": "mlp/c_proj/b",
}
MODEL_NAMES = {
    "wte.weight": "wte",
    "wpe.weight": "wpe",
    "ln_f.weight": "ln_f/g",
    "ln_f.bias": "ln_f/b",
}
# Constant buffers older transformers saved with the weights (the causal mask and its fill
# value); they carry nothing the model learns.
BUFFERS = ("attn.bias", "attn.masked_bias")
PREFIX = "transformer."
LM_HEAD = "lm_head.weight"

# transformers' activation names for GPT-2's tanh-approximate GELU (core.model.gelu).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def hf_names(n_layer: int, tied: bool = True) -> dict[str, str]:
    """Every tensor of an n_layer GPT-2: transformers' full name -> OpenAI's full name (and,
    untied, the output layer: lm_head.weight -> model/lm_head)."""
    table = {PREFIX + hf: "model/" + ours for hf, ours in MODEL_NAMES.items()}
    if not tied:
        table[LM_HEAD] = "model/lm_head"
    for i in range(n_layer):
        for hf, ours in BLOCK_NAMES.items():
            table[f"{PREFIX}h.{i}.{hf}"] = f"model/h{i}/{ours}"
    return table


def hparams_from_config(config: dict, source: str = "config.json") -> HParams:
    """GPT-2's hparams from transformers' GPT2Config, refusing what the model does not compute
    (each refusal says which setting)."""
    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise UserError(f"{source}: model_type {model_type!r}; only GPT-2 (gpt2) converts")
    activation = config.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise UserError(
            f"{source}: activation_function {activation!r} is not implemented; GPT-2's is "
            f"gelu_new (the tanh approximation)"
        )
    refused = {
        "scale_attn_by_inverse_layer_idx": False,  # a per-layer factor GPT-2 does not have
        "add_cross_attention": False,
        "scale_attn_weights": True,
    }
    for key, expected in refused.items():
        if key in config and bool(config[key]) != expected:
            raise UserError(f"{source}: {key}={config[key]} is not implemented (GPT-2: {expected})")
    n_embd = config.get("n_embd", 768)
    if config.get("n_inner") not in (None, 4 * n_embd):
        raise UserError(f"{source}: n_inner={config['n_inner']}; GPT-2's MLP is 4 * n_embd wide")
    # reorder_and_upcast_attn only computes attention in float32, as this package always does.
    try:
        return HParams(
            n_vocab=config.get("vocab_size", 50257),
            n_ctx=config.get("n_positions", config.get("n_ctx", 1024)),
            n_embd=n_embd,
            n_head=config.get("n_head", 12),
            n_layer=config.get("n_layer", 12),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        )
    except TypeError as e:
        raise UserError(f"{source}: {e}") from None


def config_from_hparams(
    hparams: HParams, eot: int | None, pad: int | None, bos: int | None = None
) -> dict:
    """transformers' GPT2Config for these hparams, as `GPT2Config.to_dict()` spells it, and
    n_ctx beside n_positions as GPT-2's own config.json has it (llama.cpp's convert_hf_to_gguf.py
    reads n_ctx; transformers ignores it)."""
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": hparams.n_vocab,
        "n_ctx": hparams.n_ctx,
        "n_positions": hparams.n_ctx,
        "n_embd": hparams.n_embd,
        "n_head": hparams.n_head,
        "n_layer": hparams.n_layer,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": hparams.layer_norm_epsilon,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": hparams.tie_word_embeddings,
        "torch_dtype": "float32",
    }
    if eot is not None:
        config.update(bos_token_id=eot if bos is None else bos, eos_token_id=eot)
    if pad is not None:
        config["pad_token_id"] = pad
    return config


def from_hf_tensors(tensors: dict[str, np.ndarray], hparams: HParams, source: str) -> dict:
    """OpenAI's tensors {"model/h0/attn/c_attn/w": array, ...} from transformers' state dict.

    Names may lack the "transformer." prefix (a bare GPT2Model). Each stored tensor is used
    once: the constant buffers are known and dropped; lm_head.weight is the output layer when
    the config unties it, else it must equal wte (GPT-2 ties them); anything else is an error
    that names it.
    """
    stored = {
        (k if k.startswith(PREFIX) or k == LM_HEAD else PREFIX + k): v for k, v in tensors.items()
    }
    table = hf_names(hparams.n_layer, hparams.tie_word_embeddings)
    out = {}
    for hf, ours in table.items():
        if hf not in stored:
            raise UserError(
                f"{source}: tensor {hf} is missing (config.json: n_layer={hparams.n_layer})"
            )
        value = np.asarray(stored.pop(hf))
        want = expected_shape(ours, hparams)
        if ours.endswith("/w"):
            want = want[1:]  # Conv1D's [nx, nf]; OpenAI's checkpoint adds a leading 1
        if tuple(value.shape) != want:
            raise UserError(
                f"{source}: tensor {hf} has shape {list(value.shape)}, config.json implies "
                f"{list(want)}"
            )
        if ours.endswith("/w"):
            value = value[None]  # [1, nx, nf]
        if not np.issubdtype(value.dtype, np.floating):
            raise UserError(f"{source}: tensor {hf} is {value.dtype}, not floating point")
        out[ours] = value.astype(np.float32)
    head = stored.pop(LM_HEAD, None)
    if head is not None and not np.array_equal(np.asarray(head, np.float32), out["model/wte"]):
        raise UserError(
            f"{source}: {LM_HEAD} differs from transformer.wte.weight, but config.json ties "
            f"them (tie_word_embeddings is true); set it to false if the model has its own "
            f"output layer"
        )
    for name in [n for n in stored if n.endswith(BUFFERS)]:
        del stored[name]
    if stored:
        extra = sorted(stored)
        raise UserError(
            f"{source}: tensor {extra[0]} has no place in GPT-2"
            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}"
        )
    return out


def to_hf_tensor(ours: str, value) -> np.ndarray:
    """OpenAI's tensor `ours` as transformers stores it: float32, a Conv1D's weight [nx, nf]."""
    value = np.asarray(value, np.float32)
    if ours.endswith("/w"):
        value = value.reshape(value.shape[-2:])  # [1, nx, nf] -> Conv1D's [nx, nf]
    return np.ascontiguousarray(value)


class SafetensorsFile:
    """model.safetensors of OpenAI's weights in transformers' names (tied: without lm_head,
    which transformers restores), written a tensor at a time: `weights` gives each by OpenAI
    name when it is taken (`pop`: a checkpoint read a weight at a time), so the file is written
    without the model or the file in memory (1558M: 6.2 GB of float32 weights, which built whole,
    with the safetensors package's bytes beside them, did not fit 24 GiB).

    The format (huggingface/safetensors' README): an 8-byte little-endian header size, the
    header (JSON: each tensor's dtype, shape and [begin, end) offsets in the data that follows;
    `__metadata__`), padded with spaces to a multiple of 8, then the tensors' bytes."""

    def __init__(self, weights, hparams: HParams):
        self.weights = weights
        self.names = hf_names(hparams.n_layer, hparams.tie_word_embeddings)  # hf -> ours
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for hf, ours in self.names.items():
            shape = expected_shape(ours, hparams)
            shape = list(shape[-2:] if ours.endswith("/w") else shape)
            end = offset + 4 * int(np.prod(shape))
            header[hf] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}
            offset = end
        self.header = header
        head = json.dumps(header, separators=(",", ":")).encode("utf-8")
        self.head = head + b" " * (-len(head) % 8)
        self.size = 8 + len(self.head) + offset

    def write(self, f) -> None:
        f.write(len(self.head).to_bytes(8, "little"))
        f.write(self.head)
        for hf, ours in self.names.items():
            value = to_hf_tensor(ours, self.weights.pop(ours))
            if list(value.shape) != self.header[hf]["shape"]:
                raise UserError(f"{ours}: shape {list(value.shape)}, not this model's")
            f.write(memoryview(value.astype("<f4", copy=False)).cast("B"))


def expected_shape(name: str, hp: HParams) -> tuple[int, ...]:
    """The shape of OpenAI's tensor `name` for these hparams."""
    e = hp.n_embd
    leaf = name.split("/", 2)[-1] if name.startswith("model/h") else name[len("model/") :]
    shapes = {
        "wte": (hp.n_vocab, e),
        "lm_head": (hp.n_vocab, e),
        "wpe": (hp.n_ctx, e),
        "attn/c_attn/w": (1, e, 3 * e),
        "attn/c_attn/b": (3 * e,),
        "attn/c_proj/w": (1, e, e),
        "mlp/c_fc/w": (1, e, 4 * e),
        "mlp/c_fc/b": (4 * e,),
        "mlp/c_proj/w": (1, 4 * e, e),
    }
    return shapes.get(leaf, (e,))  # layer norms and the e-wide biases


def read_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """The state dict of a Hugging Face directory: safetensors (one file or shards) with the
    safetensors package's NumPy API; pytorch_model.bin only if torch is installed."""
    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return _read_safetensors([single])
    if os.path.isfile(index):
        paths = [os.path.join(hf_dir, s) for s in shard_names(index)]
        for path in paths:
            if not os.path.isfile(path):
                raise UserError(f"{path}: missing (listed by {index})")
        return _read_safetensors(paths)
    bin_path = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.isfile(bin_path):
        return _read_torch(bin_path)
    raise UserError(
        f"{hf_dir}: no weights (model.safetensors, model.safetensors.index.json with its shards, "
        f"or pytorch_model.bin)"
    )


def shard_names(index: str) -> list[str]:
    """The shard files an index's `weight_map` (tensor name -> file name) names: plain file
    names inside the directory, as transformers writes them; a path out of it is refused."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: expected a weight_map object of tensor name -> shard file")
    shards = sorted(set(weight_map.values()), key=str)
    for shard in shards:
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard:
            raise UserError(
                f"{index}: weight_map names {shard!r}; shards are file names in its directory"
            )
        if shard in (".", ".."):
            raise UserError(f"{index}: weight_map names {shard!r}, not a file")
    return shards


def _read_safetensors(paths: list[str]) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise UserError(
            "reading safetensors needs the safetensors package: pip install safetensors"
        ) from None
    tensors = {}
    for path in paths:
        try:
            part = load_file(path)
        except Exception as e:  # SafetensorError, OSError: a damaged or truncated file
            raise UserError(f"{path}: unreadable safetensors ({str(e).splitlines()[0]})") from None
        tensors.update(part)
    return tensors


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path}: a PyTorch pickle, readable only with torch installed (pip install torch); "
            f"or save the model as safetensors (save_pretrained(dir, safe_serialization=True))"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None
    return {k: v.float().numpy() for k, v in state.items()}


# ---- the tokenizer -------------------------------------------------------------------------

TOKENIZER_FILES = ("vocab.json", "merges.txt")  # GPT-2's encoder.json and vocab.bpe
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")
SPECIAL_KEYS += ("mask_token",)


def _content(token) -> str | None:
    """A special token as tokenizer files spell it: a string, or {"content": string, ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def read_tokenizer(hf_dir: str) -> tuple[dict[str, int], str, list[str], str | None]:
    """(vocabulary with any added tokens, merges text, special tokens, end-of-text token) of a
    Hugging Face tokenizer in GPT-2's format."""
    vocab, merges, added, specials = read_vocab_and_merges(hf_dir)
    config = _optional_json(hf_dir, "tokenizer_config.json")
    special_map = _optional_json(hf_dir, "special_tokens_map.json")
    added.update(_optional_json(hf_dir, "added_tokens.json"))
    for i, entry in (config.get("added_tokens_decoder") or {}).items():
        content = _content(entry)
        if content is not None:
            added.setdefault(content, int(i))
            if not isinstance(entry, dict) or entry.get("special", True):
                specials.append(content)
    for content, i in sorted(added.items(), key=lambda item: item[1]):
        if content in vocab and vocab[content] != i:
            raise UserError(
                f"{hf_dir}: added token {content!r} has id {i}, vocab.json {vocab[content]}"
            )
        vocab[content] = i
    for source in (special_map, config):
        for key in SPECIAL_KEYS:
            content = _content(source.get(key))
            if content is not None:
                specials.append(content)
        specials += [t for t in map(_content, source.get("additional_special_tokens") or []) if t]
    specials = list(dict.fromkeys(t for t in specials if t in vocab))  # in order, once each
    eos = _content(special_map.get("eos_token")) or _content(config.get("eos_token"))
    if eos not in vocab:
        eos = "<|endoftext|>" if "<|endoftext|>" in vocab else None
    if eos is not None and eos not in specials:
        specials.append(eos)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise UserError(
            f"{hf_dir}: vocab.json with the added tokens must hold ids 0..N-1, each once"
        )
    return vocab, merges, specials, eos


def read_vocab_and_merges(hf_dir: str) -> tuple[dict[str, int], str, dict[str, int], list[str]]:
    """(vocabulary, merges text, added tokens, special ones among them) from vocab.json and
    merges.txt, or else from the fast tokenizer's tokenizer.json (transformers 5 writes only
    that), whose model must be GPT-2's byte-level BPE."""
    if all(os.path.isfile(os.path.join(hf_dir, name)) for name in TOKENIZER_FILES):
        vocab = read_json_object(os.path.join(hf_dir, "vocab.json"))
        with open(os.path.join(hf_dir, "merges.txt"), encoding="utf-8") as f:
            return vocab, f.read(), {}, []
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.isfile(path):
        missing = [n for n in TOKENIZER_FILES if not os.path.isfile(os.path.join(hf_dir, n))]
        raise UserError(
            f"{hf_dir}: tokenizer file {missing[0]} is missing (a GPT-2 tokenizer is vocab.json "
            f"and merges.txt, or tokenizer.json)"
        )
    data = read_json_object(path)
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise UserError(
            f"{path}: a {model.get('type')} tokenizer with a {pre.get('type')} pre-tokenizer; "
            f"only GPT-2's byte-level BPE converts"
        )
    merges = ["#version: 0.2"] + [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    added, specials = {}, []
    for token in data.get("added_tokens") or []:
        added[token["content"]] = int(token["id"])
        if token.get("special"):
            specials.append(token["content"])
    return dict(model["vocab"]), "\n".join(merges) + "\n", added, specials


def _optional_json(hf_dir: str, name: str) -> dict:
    path = os.path.join(hf_dir, name)
    return read_json_object(path) if os.path.isfile(path) else {}


# ---- whole directories ---------------------------------------------------------------------


def read_hf_dir(hf_dir: str):
    """(hparams, OpenAI's tensors, vocabulary, merges text, special tokens, end of text) of a
    Hugging Face GPT-2 directory, every part checked against the others."""
    if not os.path.isdir(hf_dir):
        raise UserError(f"{hf_dir}: no such directory")
    config_path = os.path.join(hf_dir, "config.json")
    hparams = hparams_from_config(read_json_object(config_path), config_path)
    vocab, merges, specials, eos = read_tokenizer(hf_dir)
    if len(vocab) > hparams.n_vocab:
        raise UserError(
            f"{hf_dir}: the tokenizer has {len(vocab)} tokens, config.json vocab_size "
            f"{hparams.n_vocab}"
        )
    # Embeddings padded past the tokenizer (a vocab_size rounded up): the rows no text encodes
    # to get placeholder tokens, so that every id the model may emit decodes.
    unused = [f"<|unused_{i}|>" for i in range(len(vocab), hparams.n_vocab)]
    vocab.update({t: i for i, t in zip(range(len(vocab), hparams.n_vocab), unused)})
    specials = specials + unused
    tensors = from_hf_tensors(read_weights(hf_dir), hparams, hf_dir)
    return hparams, tensors, vocab, merges, specials, eos


def write_vocabulary(directory: str, vocab, merges: str, specials, eos) -> dict[str, str]:
    """The vocabulary in a model directory's names (encoder.json, vocab.bpe, and
    special_tokens.json unless it is GPT-2's one <|endoftext|>), written into `directory`;
    returns {name: path} for `openai.write_model_dir` to copy."""
    from gpt2_tf2.tokenizer.bpe import ENDOFTEXT, SPECIALS_FILE

    files = {"encoder.json": json.dumps(vocab, ensure_ascii=False), "vocab.bpe": merges}
    if list(specials) != [ENDOFTEXT] or eos != ENDOFTEXT:
        files[SPECIALS_FILE] = {"special_tokens": list(specials), "end_of_text": eos}
    write_files(directory, files)
    return {name: os.path.join(directory, name) for name in files}


def hf_files(hparams: HParams, weights, vocab_dir: str, specials, eos) -> dict[str, object]:
    """{file name: content} of a Hugging Face directory for `GPT2LMHeadModel.from_pretrained`
    and `AutoTokenizer.from_pretrained`: weights (a `SafetensorsFile` of `weights`, OpenAI's by
    name, taken one at a time), config, generation config, tokenizer. `vocab_dir` holds the
    model's encoder.json and vocab.bpe."""
    vocab = read_json_object(os.path.join(vocab_dir, "encoder.json"))
    with open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = f.read()
    eot = vocab.get(eos) if eos else None
    pad = vocab.get("<pad>")
    # GPT-2 begins with its end-of-text token; a vocabulary with <s> (ruGPT-3's: <s> = 1,
    # </s> = 2) begins with that, as its own config.json and tokenizer say.
    bos = vocab.get("<s>") if "<s>" in specials else None
    tokens = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
    if "<pad>" in vocab:
        tokens["pad_token"] = "<pad>"
    for key, content in (("bos_token", "<s>"), ("unk_token", "<unk>"), ("mask_token", "<mask>")):
        if content in specials:
            tokens[key] = content
    tokens = {k: v for k, v in tokens.items() if v is not None}
    others = [t for t in specials if t not in tokens.values()]
    special_map = dict(tokens, **({"additional_special_tokens": others} if others else {}))
    generation = {"_from_model_config": True}
    if eot is not None:
        generation.update(bos_token_id=eot if bos is None else bos, eos_token_id=eot)
    if pad is not None:
        generation["pad_token_id"] = pad
    return {
        "model.safetensors": SafetensorsFile(weights, hparams),
        "config.json": config_from_hparams(hparams, eot, pad, bos),
        "generation_config.json": generation,
        "vocab.json": vocab,
        "merges.txt": merges,
        "special_tokens_map.json": special_map,
        "tokenizer_config.json": dict(
            special_map,
            tokenizer_class="GPT2Tokenizer",
            model_max_length=hparams.n_ctx,
            add_prefix_space=False,
            errors="replace",
        ),
    }


def write_files(directory: str, files: dict[str, object]) -> None:
    """Each file written whole into `directory`: a `SafetensorsFile` by its `write`, str as
    UTF-8 text, dicts as JSON."""
    for name, content in files.items():
        path = os.path.join(directory, name)
        if isinstance(content, SafetensorsFile):
            with open(path, "wb") as f:
                content.write(f)
            continue
        with open(path, "w", encoding="utf-8") as f:
            if isinstance(content, str):
                f.write(content)
            else:
                json.dump(content, f, ensure_ascii=False, indent=2)
