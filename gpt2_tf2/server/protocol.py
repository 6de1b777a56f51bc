"""OpenAI's completions API, as the server reads and answers it: a request body becomes the
sequences to run (`Choice`: a prompt's tokens and one `GenerationConfig` each), and the replies
and stream chunks are built as OpenAI returns them (the `openai` client's `Completion`,
`ChatCompletion` and their chunks). Errors are OpenAI's error object:
`{"error": {"message", "type", "param", "code"}}` with the HTTP status it goes with.

Fields follow OpenAI's API reference for `POST /v1/completions` and `/v1/chat/completions`;
the extensions take vLLM's names (`top_k`, `repetition_penalty`, `no_repeat_ngram_size`,
`min_tokens`, `use_beam_search`). Pure Python: no TensorFlow, testable without a model.
"""

from __future__ import annotations

import dataclasses
import secrets
import time

from gpt2_tf2.errors import UserError, first_setting, spelled
from gpt2_tf2.generation.config import GenerationConfig

MAX_STOPS = 4  # OpenAI's limit on stop sequences
MAX_LOGPROBS = 5  # OpenAI's limit on completions' logprobs
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class APIError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None):
        message = spelled(message, _api_name)  # a library message's `name`: the request's field
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            429: "rate_limit_error",
            503: "service_unavailable",
        }.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass
class Limits:
    """What one request may ask (the server's flags)."""

    n_ctx: int  # the model's context: prompt + max_tokens must fit
    n_vocab: int  # token ids in prompts are below it
    max_n: int = 16  # choices per prompt
    max_prompts: int = 16  # prompts per request


@dataclasses.dataclass
class Choice:
    """One sequence to generate: the `index`-th choice of a request."""

    index: int
    prompt_tokens: list[int]
    config: GenerationConfig
    key: tuple  # the sampler's (seed, batch) key
    row: int  # the row's number in the key's batch: n choices of one prompt differ by it


@dataclasses.dataclass
class Job:
    """A request, checked: its choices, and how to answer."""

    choices: list[Choice]
    stream: bool
    include_usage: bool
    stops: list[str]
    logprobs: int | None  # top-N alternatives per token; None: no logprobs
    echo: bool
    prompts: list[list[int]]  # each prompt's tokens (choices of prompt p: p * n .. p * n + n - 1)
    n: int
    chat: bool = False
    beams: bool = False  # beam search: each prompt's n choices are its n best beams
    id: str = dataclasses.field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        """The prompts' tokens as the model reads them (an empty one is <|endoftext|>), each
        prompt once, however many choices it has: OpenAI's usage.prompt_tokens."""
        return sum(max(len(p), 1) for p in self.prompts)


def _number(body: dict, name: str, default, low=None, high=None, integer=False):
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {kind}, got {value!r}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise APIError(400, f"'{name}' must be {bound}, got {value!r}", name)
    return value


def _prompts(prompt, encode, limits: Limits) -> list[list[int]]:
    """OpenAI's `prompt`: a string, a list of strings, a list of token ids, or a list of them."""
    if isinstance(prompt, str):
        prompts = [encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [encode(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        prompts = [list(prompt)]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and all(_is_id(t) for t in p) for p in prompt)
    ):
        prompts = [list(p) for p in prompt]
    else:
        raise APIError(
            400,
            "'prompt' must be a string, a list of strings, a list of token ids or a list of such "
            "lists",
            "prompt",
        )
    for tokens in prompts:
        bad = [t for t in tokens if not 0 <= t < limits.n_vocab]
        if bad:
            raise APIError(
                400,
                f"token id {bad[0]} is not in the vocabulary (0..{limits.n_vocab - 1})",
                "prompt",
            )
    if len(prompts) > limits.max_prompts:
        raise APIError(400, f"at most {limits.max_prompts} prompts per request", "prompt")
    return prompts


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, "'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"'stop' takes at most {MAX_STOPS} sequences", "stop")
    return stops


def read_completion(body, encode, limits: Limits, chat: bool = False) -> Job:
    """A `/v1/completions` body (or a chat body with its messages already a prompt) as a Job;
    an APIError (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    prompt = body.get("prompt")
    # No prompt, or an empty one: unconditional, from <|endoftext|> (OpenAI's default prompt).
    prompts = [[]] if prompt is None or prompt == "" else _prompts(prompt, encode, limits)
    n = _number(body, "n", 1, 1, limits.max_n, integer=True)
    default_tokens = None if chat else COMPLETION_DEFAULT_TOKENS
    max_tokens = _number(body, "max_tokens", default_tokens, 1, integer=True)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _number(body, "max_completion_tokens", None, 1, integer=True)
    logprobs = _logprobs(body, chat)
    seed = _number(body, "seed", None, integer=True)
    if seed is None:
        seed = secrets.randbelow(2**31)
    settings = {
        "temperature": _number(body, "temperature", 1.0, 0, 2),
        "top_p": _number(body, "top_p", 1.0, 0, 1),
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2, 2),
        "top_k": max(0, _number(body, "top_k", 0, -1, integer=True)),  # vLLM: -1 = off
        "repetition_penalty": _number(body, "repetition_penalty", 1.0),
        "no_repeat_ngram_size": _number(body, "no_repeat_ngram_size", 0, 0, integer=True),
        "min_new_tokens": _number(body, "min_tokens", 0, 0, integer=True),
    }
    if settings["top_p"] == 0:  # OpenAI accepts 0: the most likely token only
        settings["temperature"] = 0.0
        settings["top_p"] = 1.0
    beams = _beams(body, n, limits, logprobs)
    if beams:  # the most likely beams: no draw, so no warper applies
        settings.update(beams, temperature=1.0, top_p=1.0, top_k=0)
    choices = []
    for p, tokens in enumerate(prompts):
        length = _length(max_tokens, len(tokens), limits.n_ctx)
        config = GenerationConfig(length=length, stop_at_endoftext=True, seed=seed, **settings)
        try:
            config = config.validate(limits.n_ctx, len(tokens))
        except UserError as e:  # the setting it names is the parameter
            param = first_setting(str(e))
            raise APIError(400, str(e), param and _api_name(param)) from None
        for i in range(n):
            # As `generate(prompt, seed=seed, nsamples=n, batch_size=n)` numbers its rows.
            choices.append(Choice(p * n + i, tokens, config, (seed, 0), i))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    return Job(
        choices=choices,
        stream=bool(body.get("stream", False)),
        include_usage=bool(options.get("include_usage", False)),
        stops=_stops(body),
        logprobs=logprobs,
        echo=bool(body.get("echo", False)) and not chat,
        prompts=prompts,
        n=n,
        chat=chat,
        beams=bool(beams),
        id=("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
    )


def _beams(body: dict, n: int, limits: Limits, logprobs) -> dict:
    """vLLM's (legacy) beam search fields as the library's settings: `use_beam_search`, with
    `best_of` beams (default n, and at least 4 as the library's beam_search; the n best are the
    choices), `length_penalty` and `early_stopping`. {} when off."""
    if not _switch(body, "use_beam_search"):
        return {}
    if body.get("stream"):
        raise APIError(
            400, "beam search cannot stream: its best beams are known at the end", "stream"
        )
    if logprobs is not None:
        raise APIError(400, "beam search does not return logprobs", "logprobs")
    best_of = _number(body, "best_of", max(n, 4), n, limits.max_n, integer=True)
    return {
        "num_beams": best_of,
        "num_return_sequences": n,
        "length_penalty": _number(body, "length_penalty", 1.0),
        "early_stopping": _switch(body, "early_stopping"),
    }


def _switch(body: dict, name: str) -> bool:
    """A true/false field (absent: false); anything else is a 400 naming it."""
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false, got {value!r}", name)
    return value


# The library's setting names that the API spells otherwise.
_API_NAMES = {"min_new_tokens": "min_tokens", "length": "max_tokens"}


def _api_name(setting: str) -> str:
    """A decoding setting's name in a request (`GenerationConfig`'s name, or the API's own)."""
    return _API_NAMES.get(setting, setting)


def _logprobs(body: dict, chat: bool) -> int | None:
    if not chat:
        return _number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    if not body.get("logprobs"):
        return None
    return _number(body, "top_logprobs", 0, 0, MAX_LOGPROBS, integer=True)


def _length(max_tokens: int | None, prompt_len: int, n_ctx: int) -> int:
    """The tokens to generate: max_tokens, which must fit after the prompt (None: all that do)."""
    room = n_ctx - max(prompt_len, 1)
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {n_ctx} tokens, and your prompt has "
            f"{prompt_len}: shorten it",
            "prompt",
            "context_length_exceeded",
        )
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise APIError(
            400,
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
            f"completion). Lower max_tokens or shorten the prompt.",
            "max_tokens",
            "context_length_exceeded",
        )
    return max_tokens


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(job: Job, model: str, choices: list[dict], used: dict | None, chunk=False) -> dict:
    """A completion (or a stream's chunk of one), text or chat, as OpenAI returns it."""
    if job.chat:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        kind = "text_completion"
    out = {"id": job.id, "object": kind, "created": job.created, "model": model}
    out["choices"] = choices
    if used is not None or not chunk:
        out["usage"] = used
    if chunk and job.chat:
        out["system_fingerprint"] = None
    return out


def text_choice(job: Job, index: int, text: str, logprobs, finish, chunk=False, first=False):
    """One choice of a completion: `text` for /v1/completions, a message (a delta in a stream)
    for chat."""
    if not job.chat:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
    if chunk:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        if finish is not None and not text and not first:
            delta = {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    message = {"role": "assistant", "content": text, "refusal": None}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def completion_logprobs(decode, tokens, scores, offset: int) -> dict:
    """OpenAI's legacy `logprobs` object for tokens and their `TokenScore`s; text_offset counts
    from `offset` characters."""
    strings = [decode([t]) for t in tokens]
    offsets, at = [], offset
    for s in strings:
        offsets.append(at)
        at += len(s)
    return {
        "tokens": strings,
        "token_logprobs": [s.logprob if s is not None else None for s in scores],
        "top_logprobs": [
            {decode([t]): p for t, p in s.top} if s is not None else None for s in scores
        ],
        "text_offset": offsets,
    }


def chat_logprobs(decode, encode_bytes, tokens, scores, top: int) -> dict:
    """The chat API's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    content = []
    for token, score in zip(tokens, scores):
        text = decode([token])
        alternatives = [
            {"token": decode([t]), "logprob": p, "bytes": list(encode_bytes([t]))}
            for t, p in score.top[:top]
        ]
        content.append(
            {
                "token": text,
                "logprob": score.logprob,
                "bytes": list(encode_bytes([token])),
                "top_logprobs": alternatives,
            }
        )
    return {"content": content, "refusal": None}
