"""The checks of decoding arguments, in plain Python: the command line runs them before it
imports TensorFlow, so a bad flag is answered at once; `LanguageModel` runs them again for
library callers."""

from __future__ import annotations

from gpt2_tf2.errors import UserError

DTYPES = ("float32", "float16", "bfloat16", "int8")
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
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UserError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise UserError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    penalty = repetition_penalty
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
        raise UserError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty!r}")
    size = no_repeat_ngram_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UserError(
            f"no_repeat_ngram_size must be an integer >= 0 (0 = off), got {no_repeat_ngram_size!r}"
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
