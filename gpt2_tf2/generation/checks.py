"""The checks of decoding arguments, in plain Python: the command line runs them before it
imports TensorFlow, so a bad flag is answered at once; `LanguageModel` runs them again for
library callers."""

from __future__ import annotations

import numbers
import os

from gpt2_tf2.errors import UserError

DTYPES = ("float32", "float16", "bfloat16", "int8")
SEED_LIMIT = 2**63  # seeds travel as int64 (the sampler's key, a run's data order)
INT32_MAX = 2**31 - 1  # top_k and the n-gram size travel as int32 tensors
BACKENDS = ("xla", "tflite")
LITE_DTYPES = ("float32", "int8")


def check_dtype(dtype: str, backend: str | None = None) -> str:
    """The backend for this dtype and backend (None: int8 takes tflite, the rest xla, which
    runs every decoding strategy and was as fast at batch 1: README, "TensorFlow Lite"), or a
    UserError."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if backend is None:
        backend = "tflite" if dtype == "int8" else "xla"
    if backend not in BACKENDS:
        raise UserError(f"backend must be xla or tflite, got {backend!r}")
    if backend == "tflite" and dtype not in LITE_DTYPES:
        raise UserError(f"the tflite backend runs float32 or int8, not {dtype}")
    if backend == "xla" and dtype == "int8":
        raise UserError("int8 weights run on the tflite backend: drop --backend xla")
    return backend


def check_sampling_args(
    n_ctx: int,
    prompt_len: int,
    length: int | None,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    slide: bool = False,
) -> int:
    """Validate sampling settings for a model of context n_ctx; return the resolved length.
    slide: a length past the context is allowed (a sliding window continues); else an error."""
    if length is None:
        length = n_ctx // 2 if prompt_len else n_ctx
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise UserError(f"length must be a positive integer, got {length!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= INT32_MAX:
        raise UserError(
            f"top_k must be an integer from 0 (off) to {INT32_MAX} (any value past the "
            f"vocabulary's size keeps every token), got {top_k!r}"
        )
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise UserError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    penalty = repetition_penalty
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
        raise UserError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty!r}")
    size = no_repeat_ngram_size
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= INT32_MAX:
        raise UserError(
            f"no_repeat_ngram_size must be an integer from 0 (off) to {INT32_MAX}, got "
            f"{no_repeat_ngram_size!r}"
        )
    if slide and prompt_len >= n_ctx:
        raise UserError(
            f"the prompt ({prompt_len} tokens) fills the model's context of {n_ctx} tokens; "
            f"shorten it"
        )
    if not slide and prompt_len + length > n_ctx:
        raise UserError(
            f"prompt ({prompt_len} tokens) + length ({length}) = {prompt_len + length} exceeds "
            f"the model's context of {n_ctx} tokens; shorten the prompt or lower --length"
        )
    return length


def check_seed(seed, name: str = "seed") -> None:
    """One rule for seeds everywhere (sampling, training): None (random) or an integer from 0
    to 2**63 - 1."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{name} must be an integer from 0 to 2**63 - 1, got {seed!r}")


def check_token_ids(tokens, n_vocab: int) -> None:
    """Every id a token of the model's vocabulary (0..n_vocab-1): another vocabulary's ids index
    past the embedding matrix."""
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < n_vocab:
            raise UserError(
                f"token id {t!r} is not a token of the model's vocabulary (ids 0..{n_vocab - 1})"
            )


def check_memory(num_params: int, hparams, batch_size: int, columns: int) -> None:
    """Refuse, before allocating, a batch whose weights, key/value cache and logits exceed the
    machine's memory (a batch of 10**8 rows grew to 8 GB before it was killed); one line with
    the estimate. columns: the positions the cache holds per row."""
    total = _physical_memory()
    if total is None:
        return
    weights = num_params * 4
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


def check_nsamples(nsamples) -> None:
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 0:
        raise UserError(
            f"nsamples must be an integer >= 0 (0 = until interrupted), got {nsamples!r}"
        )


def check_beam_args(num_beams, num_return_sequences, length_penalty, early_stopping) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise UserError(f"num_beams must be a positive integer, got {num_beams!r}")
    n = num_return_sequences
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num_beams:
        raise UserError(
            f"num_return_sequences must be an integer from 1 to num_beams ({num_beams}), got {n!r}"
        )
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise UserError(f"length_penalty must be a number, got {length_penalty!r}")
    if not isinstance(early_stopping, bool):
        raise UserError(f"early_stopping must be true or false, got {early_stopping!r}")
