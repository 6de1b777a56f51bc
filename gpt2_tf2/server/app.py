"""The HTTP face of the server: a Starlette app with OpenAI's routes (`/v1/completions`,
`/v1/chat/completions`, `/v1/models`), `/health`, `/metrics` and the playground page at `/`.

The model loads in a thread once the app starts (`/health` answers 503 until then); the
requests' sequences run on the scheduler's engine (`scheduler.py`); each reply is built as
tokens arrive (`Reply`), streamed as server-sent events (`data: {chunk}` ... `data: [DONE]`, as
OpenAI streams) or returned whole. A client that goes away, streaming or not, has its
sequences cancelled: their slots free within a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.resources
import json
import logging
import secrets
import threading
import time

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.logprobs import prompt_scores
from gpt2_tf2.server import chat, protocol
from gpt2_tf2.server.beams import Beams, Cancelled
from gpt2_tf2.server.metrics import Metrics
from gpt2_tf2.server.protocol import APIError
from gpt2_tf2.server.scheduler import Scheduler, Sequence
from gpt2_tf2.server.text import TextStream

log = logging.getLogger("gpt2_tf2.server")


@dataclasses.dataclass
class Options:
    """How the server serves: its model's name, slots, queue, limits and access."""

    model_name: str = "gpt2"
    slots: int = 4
    max_queue: int = 64
    api_key: str | None = None
    allow_origin: str | None = None
    chat_template: dict = dataclasses.field(default_factory=lambda: dict(chat.DEFAULT))
    max_body: int = 1 << 20  # bytes of a request body
    max_n: int = 16  # choices per prompt
    logprobs: int = protocol.MAX_LOGPROBS  # alternatives the engine keeps per token (0: none)


class State:
    """The loaded model and its scheduler (None until loaded), or why loading failed."""

    def __init__(self, load, options: Options):
        self.load, self.options = load, options
        self.lm = self.scheduler = self.beams = self.error = None
        self.metrics = Metrics(self.gauges)
        self.started = int(time.time())

    def start(self) -> None:
        try:
            lm = self.load()
            self.scheduler = Scheduler(
                lm,
                self.options.slots,
                self.options.max_queue,
                self.metrics,
                self.options.logprobs,
            )
            self.beams = Beams(lm, self.scheduler)
            self.lm = lm
        except UserError as e:
            self.error = str(e)
            log.error("error: %s", e)
        except Exception as e:  # say why in /health; the command line prints it too
            self.error = f"{type(e).__name__}: {e}"
            log.exception("the model failed to load")

    def stop(self) -> None:
        """Cut every running and waiting sequence (their replies end, finish_reason "stop")
        and refuse new ones (503): the end of a graceful shutdown."""
        if self.scheduler is not None:
            self.scheduler.close()

    def gauges(self) -> dict:
        waiting, busy = self.scheduler.load() if self.scheduler else (0, 0)
        return {
            "queue_depth": (waiting, "Sequences waiting for a slot."),
            "slots_busy": (busy, "Slots generating."),
            "slots_total": (self.options.slots, "Slots of the engine."),
        }

    def ready(self):
        if self.lm is None:
            why = f"the model failed to load: {self.error}" if self.error else "model loading"
            raise APIError(503, why)
        return self.lm


def make_app(load, options: Options | None = None, on_failure=None) -> Starlette:
    """The app. load: a function returning the `LanguageModel` to serve (run in a thread at
    start-up); on_failure(message): called if it fails (the command line stops the server)."""
    options = options or Options()
    state = State(load, options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        def start():
            state.start()
            if state.error and on_failure:
                on_failure(state.error)

        threading.Thread(target=start, name="gpt2_tf2-load", daemon=True).start()
        yield
        await asyncio.to_thread(state.stop)

    middleware = []
    if options.allow_origin:
        origins = [o.strip() for o in options.allow_origin.split(",")]
        middleware.append(
            Middleware(
                CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"]
            )
        )
    routes = [
        Route("/", _page, methods=["GET"]),
        Route("/health", _handler(state, _health, api=False), methods=["GET"]),
        Route("/metrics", _handler(state, _metrics, api=False), methods=["GET"]),
        Route("/v1/models", _handler(state, _models), methods=["GET"]),
        Route("/v1/models/{model:path}", _handler(state, _model), methods=["GET"]),
        Route("/v1/completions", _handler(state, _completions), methods=["POST"]),
        Route("/v1/chat/completions", _handler(state, _chat), methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.server = state
    return app


def _handler(state: State, fn, api: bool = True):
    """A route: the API key checked (for /v1), APIErrors as OpenAI's error JSON, every answer
    counted in /metrics by status."""

    async def handle(request):
        try:
            if api:
                _authorize(request, state.options.api_key)
            response = await fn(request, state)
        except APIError as e:
            headers = {"Retry-After": "1"} if e.status == 429 else None
            if e.status == 401:
                headers = {"WWW-Authenticate": "Bearer"}
            response = JSONResponse(e.body(), e.status, headers=headers)
        state.metrics.request(response.status_code)
        return response

    return handle


def _authorize(request, key: str | None) -> None:
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), key):
        raise APIError(
            401,
            "Incorrect API key provided. Give it as 'Authorization: Bearer KEY'.",
            code="invalid_api_key",
        )


async def _page(request):
    page = importlib.resources.files("gpt2_tf2.server").joinpath("playground.html")
    return HTMLResponse(page.read_text(encoding="utf-8"))


async def _health(request, state: State):
    if state.lm is None:
        status = "failed" if state.error else "loading"
        return JSONResponse({"status": status, "error": state.error}, 503)
    return JSONResponse({"status": "ok"})


async def _metrics(request, state: State):
    return Response(state.metrics.text(), media_type="text/plain; version=0.0.4")


def _model_card(state: State) -> dict:
    name = state.options.model_name
    return {"id": name, "object": "model", "created": state.started, "owned_by": "gpt2_tf2"}


async def _models(request, state: State):
    return JSONResponse({"object": "list", "data": [_model_card(state)]})


async def _model(request, state: State):
    if request.path_params["model"] != state.options.model_name:
        raise APIError(404, f"The model '{request.path_params['model']}' does not exist", "model")
    return JSONResponse(_model_card(state))


async def _read_json(request, limit: int):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body is over {limit} bytes")
    data = b""
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise APIError(413, f"the request body is over {limit} bytes")
    try:
        return json.loads(data)
    except ValueError:
        raise APIError(400, "the request body is not valid JSON") from None


def _check_model(body, state: State) -> None:
    """A request names the served model, or none; any other is OpenAI's 404."""
    name = body.get("model") if isinstance(body, dict) else None
    if name is not None and name != state.options.model_name:
        raise APIError(
            404,
            f"The model '{name}' does not exist; this server serves '{state.options.model_name}'",
            "model",
            "model_not_found",
        )


async def _completions(request, state: State):
    lm = state.ready()
    body = await _read_json(request, state.options.max_body)
    _check_model(body, state)
    job = protocol.read_completion(body, lm.encode, _limits(lm, state), chat=False)
    return await _run(request, state, job)


async def _chat(request, state: State):
    lm = state.ready()
    body = await _read_json(request, state.options.max_body)
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_model(body, state)
    template = state.options.chat_template
    prompt = chat.prompt_of(body.get("messages"), template)
    job = protocol.read_completion({**body, "prompt": prompt}, lm.encode, _limits(lm, state), True)
    job.stops += [s for s in template["stop"] if s not in job.stops]
    return await _run(request, state, job)


def _limits(lm, state: State) -> protocol.Limits:
    hp = lm.hparams
    return protocol.Limits(n_ctx=hp.n_ctx, n_vocab=hp.n_vocab, max_n=state.options.max_n)


async def _run(request, state: State, job: protocol.Job):
    if job.logprobs is not None and job.logprobs > state.options.logprobs:
        raise APIError(
            400, f"this server keeps at most {state.options.logprobs} logprobs", "logprobs"
        )
    if job.beams:
        return await _beam_search(request, state, job)
    loop = asyncio.get_running_loop()
    events = asyncio.Queue()

    def deliver(event):  # from the engine's thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    reply = Reply(job, state.lm, state.options.model_name)
    if job.echo and job.logprobs is not None:  # the prompt's own, on the engine's thread
        scoring = state.scheduler.call(functools.partial(_prompt_scores, state.lm, job))
        reply.prompt_scores = await asyncio.wrap_future(scoring)
    sequences = [Sequence(c, deliver, job.logprobs is not None) for c in job.choices]
    state.scheduler.submit(sequences)
    state.metrics.tokens(prompt=job.prompt_tokens)
    if job.stream:
        return StreamingResponse(
            _stream(state, sequences, events, reply),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    collect = asyncio.ensure_future(_collect(state, sequences, events, reply))
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not collect.done():  # the client went away: free its slots
        state.scheduler.cancel(sequences)
        collect.cancel()
        return Response(status_code=499)
    gone.cancel()
    return JSONResponse(collect.result())


async def _beam_search(request, state: State, job: protocol.Job):
    """A beam search request: its choices when the search ends (beams cannot stream), or
    nothing if the client went away first (the search stops at its next piece)."""
    state.metrics.tokens(prompt=job.prompt_tokens)
    stop = threading.Event()
    search = asyncio.ensure_future(asyncio.to_thread(state.beams.run, job, stop))
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({search, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not search.done():
        stop.set()
        with contextlib.suppress(Cancelled):
            await search
        return Response(status_code=499)
    gone.cancel()
    reply = Reply(job, state.lm, state.options.model_name)
    for i, tokens in enumerate(search.result()):
        reply.handle(("tokens", i, tokens, None))
        ended = len(tokens) < job.choices[i].config.length  # at <|endoftext|>
        reply.handle(("end", i, "stop" if ended else "length"))
    state.metrics.tokens(completion=sum(reply.counted))
    return JSONResponse(reply.whole())


def _prompt_scores(lm, job: protocol.Job) -> list:
    try:
        return [prompt_scores(lm, c.prompt_tokens, job.logprobs) for c in job.choices]
    except UserError as e:  # before any sequence starts: the request is refused whole
        raise APIError(400, str(e), "echo") from None


async def _disconnected(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(state, sequences, events, reply) -> dict:
    while reply.open:
        update = reply.handle(await events.get())
        if update and reply.streams[update.index].stopped:  # a stop sequence: the row's done
            state.scheduler.cancel([sequences[update.index]])
    return reply.whole()


async def _stream(state, sequences, events, reply):
    try:
        while reply.open:
            try:
                update = reply.handle(await events.get())
            except APIError as e:  # the stream has begun: the error is its last event
                yield _sse(e.body())
                return
            if update is None:
                continue
            if reply.streams[update.index].stopped:  # a stop sequence: the row's done
                state.scheduler.cancel([sequences[update.index]])
            yield _sse(reply.chunk(update))
        if reply.job.include_usage:
            yield _sse(reply.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:  # the client went away (the generator is cancelled), or all ended
        state.scheduler.cancel(sequences)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@dataclasses.dataclass
class Update:
    """What one event adds to a choice: text, its tokens and scores, and its finish reason."""

    index: int
    text: str
    tokens: list
    scores: list
    finish: str | None


class Reply:
    """A job's answer as its sequences' events arrive: each choice's text (cut at its stop
    sequences), tokens, log-probabilities and finish reason."""

    def __init__(self, job: protocol.Job, lm, model: str):
        self.job, self.lm, self.model = job, lm, model
        n = len(job.choices)
        self.streams = [TextStream(lm.encoder, job.stops) for _ in range(n)]
        self.finish = [None] * n
        self.counted = [0] * n  # tokens generated up to the end (or the stop sequence)
        self.tokens = [[] for _ in range(n)]
        self.scores = [[] for _ in range(n)]
        self.sent_first = [False] * n
        self.open = n  # sequences the scheduler has not ended yet
        # With echo: each choice's prompt as text, which its reply begins with.
        self.prefixes = [
            lm.encoder.decode(c.prompt_tokens) if job.echo else "" for c in job.choices
        ]
        self.prompt_scores = None  # with echo and logprobs: each choice's prompt's scores

    def handle(self, event) -> Update | None:
        kind, index = event[0], event[1]
        stream = self.streams[index]
        if kind == "error":
            self.open -= 1
            raise APIError(500, event[2])
        if kind == "end":
            self.open -= 1
            if self.finish[index] is not None:
                return None
            text, tokens, scores = stream.flush()
            self.finish[index] = "stop" if event[2] in ("stop", "cancelled") else "length"
        else:
            if self.finish[index] is not None:
                return None  # tokens past a stop sequence: not the client's
            self.counted[index] += len(event[2])
            text, tokens, scores = stream.feed(event[2], event[3])
            if stream.stopped:
                self.finish[index] = "stop"
        self.tokens[index] += tokens
        self.scores[index] += scores
        return Update(index, text, tokens, scores, self.finish[index])

    def _logprobs(self, tokens, scores, offset: int):
        if self.job.logprobs is None:
            return None
        decode, top = self.lm.encoder.decode, self.job.logprobs
        if self.job.chat:
            return protocol.chat_logprobs(decode, self.lm.encoder.decode_bytes, tokens, scores, top)
        scores = [s._replace(top=s.top[:top]) if s is not None else None for s in scores]
        return protocol.completion_logprobs(decode, tokens, scores, offset)

    def _with_prompt(self, index: int, tokens, scores, offset: int):
        """With echo and logprobs, the prompt's tokens and scores come first and offsets count
        from the prompt's start (OpenAI's legacy completions); else as they are."""
        if self.prompt_scores is None:
            return tokens, scores, offset
        prompt = self.job.choices[index].prompt_tokens
        return prompt + tokens, self.prompt_scores[index] + scores, 0

    def chunk(self, u: Update) -> dict:
        job = self.job
        first = not self.sent_first[u.index]
        self.sent_first[u.index] = True
        text, tokens, scores = u.text, u.tokens, u.scores
        prefix = self.prefixes[u.index]
        offset = len(prefix) + len(self.streams[u.index].text) - len(u.text)
        if first:
            text = prefix + text
            tokens, scores, offset = self._with_prompt(u.index, tokens, scores, offset)
        logprobs = self._logprobs(tokens, scores, offset)
        choice = protocol.text_choice(job, u.index, text, logprobs, u.finish, True, first)
        return protocol.completion(job, self.model, [choice], None, chunk=True)

    def usage(self) -> dict:
        return protocol.usage(self.job.prompt_tokens, sum(self.counted))

    def usage_chunk(self) -> dict:
        return protocol.completion(self.job, self.model, [], self.usage(), chunk=True)

    def whole(self) -> dict:
        choices = []
        for i, stream in enumerate(self.streams):
            prefix = self.prefixes[i]
            tokens, scores = self.tokens[i], self.scores[i]
            tokens, scores, offset = self._with_prompt(i, tokens, scores, len(prefix))
            logprobs = self._logprobs(tokens, scores, offset)
            text = prefix + stream.text
            choices.append(protocol.text_choice(self.job, i, text, logprobs, self.finish[i]))
        return protocol.completion(self.job, self.model, choices, self.usage())
