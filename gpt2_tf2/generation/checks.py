"""Checks of what is not a decoding setting, in plain Python (the settings' own check is
`config.GenerationConfig.validate`): dtype and backend, seeds (sampling and training alike),
token ids, and a batch's memory. The command line runs them before it imports TensorFlow, so a
bad flag is answered at once."""

from __future__ import annotations

import numbers
import os

from gpt2_tf2.errors import UserError

DTYPES = ("float32", "float16", "bfloat16", "int8", "int4")
SEED_LIMIT = 2**63  # seeds travel as int64 (the sampler's key, a run's data order)
INT32_MAX = 2**31 - 1  # top_k and the n-gram size travel as int32 tensors
BACKENDS = ("xla", "tflite")
LITE_DTYPES = ("float32", "int8", "int4")
QUANTIZED = ("int8", "int4")  # weights only TensorFlow Lite's kernels multiply


def check_dtype(dtype: str, backend: str | None = None) -> str:
    """The backend for this dtype and backend (None: int8 and int4 take tflite, the rest xla, which
    runs every decoding strategy and was as fast at batch 1: docs/sampling.md, "TensorFlow
    Lite"), or a UserError."""
    if dtype not in DTYPES:
        raise UserError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if backend is None:
        backend = "tflite" if dtype in QUANTIZED else "xla"
    if backend not in BACKENDS:
        raise UserError(f"`backend` must be xla or tflite, got {backend!r}")
    if backend == "tflite" and dtype not in LITE_DTYPES:
        raise UserError(f"the tflite backend runs float32, int8 or int4, not {dtype}")
    if backend == "xla" and dtype in QUANTIZED:
        raise UserError(f"{dtype} weights run on the tflite backend, not xla")
    return backend


def check_seed(seed, name: str = "seed") -> None:
    """One rule for seeds everywhere (sampling, training): None (random) or an integer from 0
    to 2**63 - 1."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"`{name}` must be an integer from 0 to 2**63 - 1, got {seed!r}")


def check_token_ids(tokens, n_vocab: int) -> None:
    """Every id a token of the model's vocabulary (0..n_vocab-1): another vocabulary's ids index
    past the embedding matrix."""
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < n_vocab:
            raise UserError(
                f"token id {t!r} is not a token of the model's vocabulary (ids 0..{n_vocab - 1})"
            )


def bucket(n: int, limit: int, smallest: int = 16) -> int:
    """n rounded up to a power of two (at least `smallest`), but not past `limit` (>= n).

    Shapes come in these sizes only, so the number of compilations stays small: at most
    log2(n_ctx / 16) + 1 prompt sizes times as many length sizes, per batch size.
    """
    size = smallest
    while size < n:
        size *= 2
    return max(n, min(size, limit))


def cache_columns(n_ctx: int, prompt_len: int, length: int) -> int:
    """The positions per row of the key/value cache that sampling `length` tokens after a
    prompt of `prompt_len` allocates: the prompt's size bucket and the length's, at most n_ctx
    (what `sampler.EngineRows.prefill` sizes each window's cache by); past the context, windows
    of up to n_ctx."""
    if prompt_len + length > n_ctx:
        return n_ctx
    return min(bucket(max(prompt_len, 1), n_ctx) + bucket(length, n_ctx), n_ctx)


def check_memory(weight_bytes: float, hparams, batch_size: int, columns: int) -> None:
    """Refuse, before allocating, a batch whose weights, key/value cache and logits exceed the
    machine's memory (a batch of 10**8 rows grew to 8 GB before it was killed); one line with
    the estimate. weight_bytes: the weights' bytes in memory; columns: the positions the cache
    holds per row (`cache_columns`)."""
    total = _physical_memory()
    if total is None:
        return
    weights = int(weight_bytes)
    cache = 2 * hparams.n_layer * batch_size * columns * hparams.n_embd * 4  # keys and values
    logits = 4 * batch_size * hparams.n_vocab * 4  # the logits and the processors' copies
    need = weights + cache + logits
    if need > total:
        from gpt2_tf2.files import human_size

        raise UserError(
            f"batch_size {batch_size} needs about {human_size(need)} (weights "
            f"{human_size(weights)}, key/value cache {human_size(cache)}, logits "
            f"{human_size(logits)}), more than this machine's {human_size(total)} of memory; "
            f"lower batch_size"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this system
        return None


def contexts_and_stop(encoder, prompts, stop_at_endoftext: bool):
    """(what each prompt's decoding starts from, the stop token): an empty prompt starts from
    <|endoftext|> (unconditional), and with stop_at_endoftext that token ends a row (-1:
    none). The fixed-batch loop and the decode engine alike."""
    eot = encoder.eot_token
    if not all(prompts) and eot is None:
        raise UserError("unconditional sampling needs <|endoftext|> in the vocabulary")
    contexts = [p or [eot] for p in prompts]
    return contexts, (eot if stop_at_endoftext and eot is not None else -1)
