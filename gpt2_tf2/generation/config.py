"""`GenerationConfig`: every decoding setting, with its default, its check and its help, in one
place (as `training.config.TrainConfig` is for training).

The library's `generate`, `generate_tokens`, `stream`, `stream_tokens` and `beam_search` take one
(or its fields as keywords), the `sample` command's flags and `--help` are built from its fields,
and the decode loop's tensors (`settings.Settings`) and the SavedModel's signature are made from
the fields marked with a tensor dtype. A new setting is one field here, one processor, and its
tests. Names and meanings follow transformers' `GenerationConfig` where it has them.

Plain Python: the command line checks its flags with it before TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.checks import INT32_MAX, check_seed

MAX_LIST_BATCH = 16  # rows at once for a list of prompts, unless batch_size says otherwise


def setting(default, help: str, tensor: str | None = None):
    """A field: its default, its help, and the dtype it has in the decode loop (if it goes
    there as a tensor: a new value then never recompiles)."""
    return dataclasses.field(default=default, metadata={"help": help, "tensor": tensor})


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    seed: int | None = setting(
        None, "integer seed; the same seed gives the same samples. Default: random."
    )
    nsamples: int = setting(
        1, "number of samples; 0 = keep sampling until interrupted (unconditional only)."
    )
    batch_size: int | None = setting(
        None,
        "samples computed at once (faster per sample, more memory); rows of different prompts "
        "run together, left-padded and masked, each as its prompt alone. Default 1; a list of "
        f"prompts given to the library runs whole, up to {MAX_LIST_BATCH} rows.",
    )
    length: int | None = setting(
        None,
        "tokens to generate per sample; default n_ctx // 2 with a prompt, n_ctx without. Past "
        "the model's context (1024 for OpenAI's releases) a sliding window continues "
        "(window_stride); beam search stays within the context.",
    )
    temperature: float = setting(
        1.0,
        "randomness; 1 samples the model's distribution, lower is more conservative, 0 is "
        "greedy (always the most likely token).",
        "float32",
    )
    top_k: int = setting(
        0,
        "sample only among the k most likely tokens; 0 = no limit. 40 is a common choice.",
        "int32",
    )
    top_p: float = setting(
        1.0,
        "nucleus sampling: only among the most likely tokens whose probabilities add up to "
        "top_p, in (0, 1]; 1 = no limit. Combines with top_k.",
        "float32",
    )
    repetition_penalty: float = setting(
        1.0,
        "CTRL's penalty on tokens already in the prompt or the sample (their positive logits "
        "divided by it, negative ones multiplied); 1 = off, 1.2 a common choice. Cures the loops "
        "greedy decoding falls into.",
        "float32",
    )
    no_repeat_ngram_size: int = setting(
        0,
        "never repeat an n-gram of this many tokens (of the prompt or the sample); 0 = off, 3 a "
        "common choice.",
        "int32",
    )
    presence_penalty: float = setting(
        0.0,
        "OpenAI's presence penalty: subtracted from the logit of every token the sample already "
        "holds (the output, not the prompt), in [-2, 2]; 0 = off, > 0 favours new topics.",
        "float32",
    )
    frequency_penalty: float = setting(
        0.0,
        "OpenAI's frequency penalty: subtracted from a token's logit once per time the sample "
        "already holds it (the output, not the prompt), in [-2, 2]; 0 = off, > 0 discourages "
        "verbatim repeats.",
        "float32",
    )
    min_new_tokens: int = setting(
        0,
        "with stop_at_endoftext: <|endoftext|> cannot be chosen before this many tokens are "
        "generated; 0 = off.",
        "int32",
    )
    num_beams: int = setting(
        1,
        "beam search with this many beams instead of sampling (1 = off): the most likely "
        "continuations the search finds, deterministic (temperature, top_k and top_p do not "
        "apply); a beam ends at <|endoftext|>.",
    )
    num_return_sequences: int = setting(
        1, "with num_beams: return this many of the best beams, best first."
    )
    length_penalty: float = setting(
        1.0,
        "with num_beams: a finished beam scores log P / length ** length_penalty; > 0 favours "
        "longer beams, < 0 shorter ones.",
    )
    early_stopping: bool = setting(
        False,
        "with num_beams: stop as soon as num_beams beams have ended, instead of when no open "
        "beam can beat them.",
    )
    window_stride: int | None = setting(
        None,
        "past the context (prompt + length > n_ctx) the text goes on in a sliding window: the "
        "last n_ctx - window_stride tokens become the prompt again, their cache is recomputed, "
        "and window_stride more tokens follow. Default n_ctx // 2; smaller keeps more context, "
        "larger is faster.",
    )
    stop_at_endoftext: bool = setting(
        False, "end each sample at the first <|endoftext|> token (not included)."
    )

    @classmethod
    def of(cls, config: GenerationConfig | None = None, **settings) -> GenerationConfig:
        """`config` (default: the defaults) with `settings` replaced; an unknown name is a
        UserError that lists the known ones."""
        if config is not None and not isinstance(config, cls):
            raise UserError(
                "settings are given by name (length=20, top_k=40, ...) or as a GenerationConfig; "
                f"got {config!r} where the config goes"
            )
        unknown = sorted(set(settings) - set(NAMES))
        if unknown:
            raise UserError(
                f"unknown generation setting {unknown[0]!r}; the settings are: {', '.join(NAMES)}"
            )
        return dataclasses.replace(config or cls(), **settings)

    @property
    def beams(self) -> bool:
        return self.num_beams != 1

    def validate(self, n_ctx: int | None = None, prompt_len: int = 0) -> GenerationConfig:
        """The one check of these settings: a UserError naming the first bad value. With the
        model's context n_ctx and the (longest) prompt's length, also whether they fit, and the
        config is returned with its length and window_stride resolved."""
        check_seed(self.seed)
        _check_int(self.nsamples, "nsamples", 0, note="(0 = until interrupted)")
        if self.batch_size is not None:
            _check_int(self.batch_size, "batch_size", 1)
        if self.length is not None:
            _check_int(self.length, "length", 1)
        _check_sampling(self)
        _check_beams(self)
        if n_ctx is None:
            return self
        length = self.length
        if length is None:
            length = n_ctx // 2 if prompt_len else n_ctx
        if self.beams or prompt_len >= n_ctx:
            _check_fits(n_ctx, prompt_len, length, slide=not self.beams)
        stride = n_ctx // 2 if self.window_stride is None else self.window_stride
        if not _is_int(stride) or not 0 < stride < n_ctx:
            raise UserError(f"`window_stride` must be an integer in 1..{n_ctx - 1}, got {stride!r}")
        return dataclasses.replace(self, length=length, window_stride=stride)

    def help(self) -> list[tuple[str, str]]:
        """(name, help) of every setting, in order."""
        return [(f.name, f.metadata["help"]) for f in dataclasses.fields(self)]


NAMES = tuple(f.name for f in dataclasses.fields(GenerationConfig))
# The settings that travel into the decode loop as tensors, with their dtypes (settings.Settings,
# the SavedModel's signature).
TENSORS = {
    f.name: f.metadata["tensor"]
    for f in dataclasses.fields(GenerationConfig)
    if f.metadata["tensor"]
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(value, name: str, low: int, high: int | None = None, note: str = "") -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        if high is not None:
            bound = f"from {low} {note} to {high}".replace("  ", " ")
            raise UserError(f"`{name}` must be an integer {bound}, got {value!r}")
        if low == 1:
            raise UserError(f"`{name}` must be a positive integer, got {value!r}")
        raise UserError(
            f"`{name}` must be an integer >= {low} {note}, got {value!r}".replace("  ", " ")
        )


def _check_sampling(c: GenerationConfig) -> None:
    if not (_is_number(c.temperature) and c.temperature >= 0):
        raise UserError(f"`temperature` must be >= 0 (0 = greedy), got {c.temperature!r}")
    if not _is_int(c.top_k) or not 0 <= c.top_k <= INT32_MAX:
        raise UserError(
            f"`top_k` must be an integer from 0 (off) to {INT32_MAX} (any value past the "
            f"vocabulary's size keeps every token), got {c.top_k!r}"
        )
    if not (_is_number(c.top_p) and 0 < c.top_p <= 1):
        raise UserError(f"`top_p` must be in (0, 1] (1 = off), got {c.top_p!r}")
    if not (_is_number(c.repetition_penalty) and c.repetition_penalty > 0):
        raise UserError(f"`repetition_penalty` must be > 0 (1 = off), got {c.repetition_penalty!r}")
    _check_int(c.no_repeat_ngram_size, "no_repeat_ngram_size", 0, INT32_MAX, "(off)")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(c, name)
        if not (_is_number(value) and -2 <= value <= 2):
            raise UserError(f"`{name}` must be a number in [-2, 2] (0 = off), got {value!r}")
    _check_int(c.min_new_tokens, "min_new_tokens", 0, INT32_MAX, "(off)")
    if c.window_stride is not None and not (_is_int(c.window_stride) and c.window_stride > 0):
        raise UserError(f"`window_stride` must be a positive integer, got {c.window_stride!r}")
    if not isinstance(c.stop_at_endoftext, bool):
        raise UserError(f"`stop_at_endoftext` must be true or false, got {c.stop_at_endoftext!r}")


def _check_beams(c: GenerationConfig) -> None:
    _check_int(c.num_beams, "num_beams", 1)
    n = c.num_return_sequences
    if not _is_int(n) or not 1 <= n <= c.num_beams:
        if not c.beams and _is_int(n):
            raise UserError(
                "`num_return_sequences` counts the beams returned: it needs `num_beams` > 1 "
                "(`nsamples` gives more samples)"
            )
        raise UserError(
            f"`num_return_sequences` must be an integer from 1 to `num_beams` ({c.num_beams}), "
            f"got {n!r}"
        )
    if not _is_number(c.length_penalty):
        raise UserError(f"`length_penalty` must be a number, got {c.length_penalty!r}")
    if not isinstance(c.early_stopping, bool):
        raise UserError(f"`early_stopping` must be true or false, got {c.early_stopping!r}")
    if not c.beams:
        return
    if c.nsamples != 1 or (c.batch_size or 1) != 1:
        raise UserError(
            "beam search is deterministic: `nsamples` and `batch_size` stay 1; "
            "`num_return_sequences` gives more beams"
        )
    if c.top_k or c.top_p != 1.0:
        raise UserError("beam search does not sample: drop `top_k` and `top_p`")


def _check_fits(n_ctx: int, prompt_len: int, length: int, slide: bool) -> None:
    if slide and prompt_len >= n_ctx:
        raise UserError(
            f"the prompt ({prompt_len} tokens) fills the model's context of {n_ctx} tokens; "
            f"shorten it"
        )
    if not slide and prompt_len + length > n_ctx:
        raise UserError(
            f"prompt ({prompt_len} tokens) + `length` ({length}) = {prompt_len + length} exceeds "
            f"the model's context of {n_ctx} tokens; shorten the prompt or lower `length`"
        )
