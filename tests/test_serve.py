"""The OpenAI-compatible server, driven by the real `openai` client (the reference for the API's
shape and errors) against an in-process server on 127.0.0.1 serving the tiny model: replies
equal the library's own samples for the same seeds, streams equal whole replies, stop
sequences, logprobs, chat, limits and errors, a client that goes away frees its slot, and
concurrent requests each get what they get alone. The command itself (its flags, SIGTERM, a
port in use) is tests/test_serve_process.py's."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx2 as httpx
import openai
import pytest

from conftest import serving, wait_ready
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.engine import Engine

PROMPT = "Hello there, my friend"


@pytest.fixture(scope="module")
def server(tiny_lm):
    with serving(lambda: tiny_lm, max_queue=8) as (url, app):
        wait_ready(url)
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def library(lm, prompt, n, **settings):
    """The library's samples of `prompt`: what the server's n choices must equal when its
    engine has as many slots as the library's batch (n, or 2 and more: batch 1 multiplies by
    the weights through another kernel, whose rounding may flip a near-tie of the tiny random
    model's logits)."""
    config = GenerationConfig(nsamples=n, batch_size=n, stop_at_endoftext=True, **settings)
    return lm.generate(prompt, config)


def alone(lm, prompt, n, slots, seed, engine=None, **settings):
    """Each of a request's n choices run alone on an engine of the server's size: what it must
    give however many others share the engine (`engine.run_alone`; `engine`: an idle one to
    reuse, its compiled programs kept, for tests that ask for many references)."""
    from gpt2_tf2.generation.engine import run_alone

    config = GenerationConfig(stop_at_endoftext=True, seed=seed, **settings)
    prompt = lm.encode(prompt)
    tokens = [run_alone(lm, prompt, config, slots, engine, key=(seed, 0), row=i) for i in range(n)]
    return [lm.encoder.decode(t) for t in tokens]


def test_completions_equal_the_librarys_samples(client, tiny_lm):
    reply = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, n=3, seed=7, extra_body={"top_k": 40}
    )
    assert [c.text for c in reply.choices] == library(
        tiny_lm, PROMPT, 3, length=12, seed=7, top_k=40
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.object == "text_completion" and reply.model == "tiny"
    prompt_tokens = len(tiny_lm.encode(PROMPT))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.completion_tokens == sum(len(tiny_lm.encode(c.text)) for c in reply.choices)
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    assert {c.finish_reason for c in reply.choices} <= {"length", "stop"}


def test_settings_reach_the_engine(client, tiny_lm):
    """Greedy with OpenAI's penalties and vLLM's extensions: the library's tokens."""
    settings = dict(temperature=0, presence_penalty=0.6, frequency_penalty=0.4)
    extra = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_tokens=3)
    reply = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=15, extra_body=extra, **settings
    )
    extra["min_new_tokens"] = extra.pop("min_tokens")
    want = library(tiny_lm, PROMPT, 1, length=15, **settings, **extra)
    assert reply.choices[0].text == want[0]


def test_a_stream_is_the_whole_reply_in_pieces(client):
    kw = dict(model="tiny", prompt=[PROMPT, "Once upon"], max_tokens=10, n=2, seed=3)
    whole = client.completions.create(**kw)
    chunks = list(
        client.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    texts, finish = {}, {}
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    assert [finish[i] for i in range(4)] == [c.finish_reason for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stop_sequences_cut_the_text(client):
    full = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    text = full.choices[0].text
    stop = text[8:11]  # a piece of the middle, whatever the tokens around it
    cut = text[: text.find(stop)]
    reply = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "never there"]
    )
    assert reply.choices[0].text == cut and reply.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=stop, stream=True
        )
        if c.choices
    )
    assert streamed == cut  # never a piece of the stop sequence, even for a moment
    assert reply.usage.completion_tokens < full.usage.completion_tokens


def test_tokens_after_a_stop_sequence_are_neither_sent_nor_counted(tiny_lm):
    """The engine may hand a reply tokens past a stop sequence before the row's cancel lands (a
    step of several tokens, or the next step's): the reply drops them, its usage counts up to the
    stop. Whether a served request meets this depends on timing, so the reply is fed here."""
    from gpt2_tf2.server import protocol
    from gpt2_tf2.server.app import Reply

    tokens = tiny_lm.encode(" one two three four five")
    choice = protocol.Choice(0, tiny_lm.encode(PROMPT), GenerationConfig(), (0, 0), 0)
    job = protocol.Job([choice], False, False, [" three"], None, False, [choice.prompt_tokens], 1)
    reply = Reply(job, tiny_lm, "tiny")
    first = reply.handle(("tokens", 0, tokens[:4], [None] * 4))
    assert first.text == " one two" and first.finish == "stop"
    counted, sent = list(reply.counted), [list(t) for t in reply.tokens]
    assert reply.handle(("tokens", 0, tokens[4:], [None] * len(tokens[4:]))) is None
    assert reply.handle(("end", 0, "length")) is None
    assert reply.counted == counted and reply.tokens == sent and reply.finish == ["stop"]
    assert reply.open == 0


def test_logprobs_and_echo(client, tiny_lm):
    """With echo, the prompt's tokens come first with their own log-probabilities (the first
    has none, as in OpenAI's replies), equal to scoring's; a stream gives the same pieces."""
    import numpy as np
    import tensorflow as tf

    kw = dict(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, echo=True)
    choice = client.completions.create(**kw).choices[0]
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    prompt = tiny_lm.encode(PROMPT)
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == len(prompt) + 6
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[0] == 0 and lp.text_offset[len(prompt)] == len(PROMPT)
    tokens = prompt + tiny_lm.encode(choice.text[len(PROMPT) :])
    nll = tiny_lm._token_nll_eager(tf.constant([tokens])).numpy()[0]
    np.testing.assert_allclose(lp.token_logprobs[1:], -nll, atol=1e-4)
    for logprob, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert len(top) == 3 and max(top.values()) >= logprob - 1e-5
    for token, logprob, top in zip(lp.tokens[-6:], lp.token_logprobs[-6:], lp.top_logprobs[-6:]):
        assert max(top.values()) == pytest.approx(logprob, abs=1e-5)  # greedy: the top one
        assert token in top
    pieces = [c.choices[0] for c in client.completions.create(**kw, stream=True) if c.choices]
    assert "".join(p.text for p in pieces) == choice.text
    streamed = [x for p in pieces if p.logprobs for x in p.logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)
    offsets = [x for p in pieces if p.logprobs for x in p.logprobs.text_offset]
    assert offsets == lp.text_offset
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, logprobs=6)


def test_beam_search_is_the_librarys(client, tiny_lm):
    """vLLM's use_beam_search: the n best of best_of beams are the library's beam search (the
    one checked against transformers), with its length penalty and early stopping; it cannot
    stream or give logprobs."""
    prompt = tiny_lm.encode(PROMPT)
    for extra, settings in [
        ({"best_of": 3}, {}),
        (
            {"best_of": 4, "length_penalty": 0.5, "early_stopping": True},
            {"length_penalty": 0.5, "early_stopping": True},
        ),
    ]:
        reply = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, n=2,
            extra_body={"use_beam_search": True, **extra},
        )  # fmt: skip
        want = tiny_lm.beam_search(
            prompt, num_beams=extra["best_of"], num_return_sequences=2, length=8, **settings
        )
        assert [c.text for c in reply.choices] == [tiny_lm.encoder.decode(t) for t in want]
        assert [c.finish_reason for c in reply.choices] == [
            "length" if len(t) == 8 else "stop" for t in want
        ]
        assert reply.usage.completion_tokens == sum(len(t) for t in want)
    beams = {"use_beam_search": True}
    with pytest.raises(openai.BadRequestError, match="cannot stream"):
        client.completions.create(model="tiny", prompt="Hi", stream=True, extra_body=beams)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt="Hi", logprobs=1, extra_body=beams)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        extra = {**beams, "best_of": 2}  # fewer beams than choices
        client.completions.create(model="tiny", prompt="Hi", n=3, extra_body=extra)


def test_a_beam_search_whose_client_left_stops_at_its_next_piece(tiny_lm):
    """The server sets `gone` when the client disconnects: the search stops before its next
    piece (16 steps), not at max_tokens, and frees its slot; one nobody left runs to the end."""
    from gpt2_tf2.server import protocol
    from gpt2_tf2.server.beams import PIECE, Beams, Cancelled

    body = {"prompt": PROMPT, "max_tokens": 40, "use_beam_search": True}
    limits = protocol.Limits(n_ctx=tiny_lm.hparams.n_ctx, n_vocab=tiny_lm.hparams.n_vocab)
    job = protocol.read_completion(body, tiny_lm.encode, limits)
    beams, steps = Beams(tiny_lm), []
    step = beams.search.step

    def counted(n):  # the steps each piece took
        out = step(n)
        steps.append(beams.search.steps(0))
        return out

    gone = threading.Event()

    def leaving(n):  # the client leaves during the first piece
        gone.set()
        return counted(n)

    beams.search.step = leaving
    with pytest.raises(Cancelled):
        beams.run(job, gone)
    assert steps == [PIECE] and beams.search.busy() == []
    steps.clear()
    beams.search.step = counted
    (tokens,) = beams.run(job, threading.Event())
    assert steps[0] == PIECE and len(steps) >= 2 and len(tokens) >= 1  # past its first piece
    assert [tokens] == tiny_lm.beam_search(tiny_lm.encode(PROMPT), job.choices[0].config)


def test_chat_is_the_template_as_a_completion(client, tiny_lm):
    messages = [
        {"role": "system", "content": "A helpful assistant."},
        {"role": "user", "content": "Say hello."},
    ]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=4)
    prompt = "A helpful assistant.\n\nUser: Say hello.\nAssistant:"
    want = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, seed=4, stop=["\nUser:"]
    )
    assert reply.choices[0].message.content == want.choices[0].text
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == len(tiny_lm.encode(prompt))
    pieces = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=10, seed=4, stream=True
        )
    )
    assert pieces[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == want.choices[0].text
    assert pieces[-1].choices[0].finish_reason == want.choices[0].finish_reason


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}
    page = httpx.get(server[0] + "/")
    assert page.status_code == 200 and "/v1/completions" in page.text


@pytest.mark.parametrize(
    "kw, param, words",
    [
        (dict(temperature=3), "temperature", "from 0 to 2"),
        (dict(max_tokens=100), "max_tokens", "maximum context length is 64"),
        (dict(n=17), "n", "from 1 to 16"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        (dict(extra_body={"prompt": [[1, 99999]]}), "prompt", "not in the vocabulary"),
        (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty", "must be > 0"),
    ],
)
def test_bad_requests_get_openais_error(client, kw, param, words):
    kw = {"model": "tiny", "prompt": "Hi", "max_tokens": 4, **kw}
    with pytest.raises(openai.BadRequestError, match=words) as caught:
        client.completions.create(**kw)
    error = caught.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "`" not in error["message"]  # the library's `name` said in the API's words
    assert caught.value.status_code == 400


def test_bodies_too_large_or_not_json(server):
    url = server[0] + "/v1/completions"
    big = httpx.post(url, content=b'{"prompt": "' + b"x" * (1 << 20) + b'"}')
    assert big.status_code == 413 and "over" in big.json()["error"]["message"]
    bad = httpx.post(url, content=b"{nope")
    assert bad.status_code == 400 and bad.json()["error"]["message"] == (
        "the request body is not valid JSON"
    )


def test_api_key(tiny_lm):
    with serving(lambda: tiny_lm, api_key="s3cret") as (url, _):
        wait_ready(url)
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model="tiny", prompt="Hi", max_tokens=2)
        right = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert right.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices
        assert httpx.get(url + "/health").status_code == 200  # no key: for load balancers


def test_health_says_loading_until_the_model_is_there(tiny_lm):
    loaded = threading.Event()

    def load():
        loaded.wait(30)
        return tiny_lm

    with serving(load) as (url, _):
        assert httpx.get(url + "/health").status_code == 503
        early = httpx.post(url + "/v1/completions", json={"prompt": "Hi"})
        assert early.status_code == 503 and "loading" in early.json()["error"]["message"]
        loaded.set()
        wait_ready(url)


LONG = {"prompt": "Hi", "max_tokens": 60, "min_tokens": 60, "n": 16}  # 960 tokens, one slot


def freed(app, seconds: float = 20) -> int:
    """Wait until no sequence waits or runs; the tokens generated by then."""
    state = app.state.server
    deadline = time.monotonic() + seconds
    while state.scheduler.load() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.scheduler.load() == (0, 0)
    return state.metrics.completion_tokens


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot(tiny_lm):
    with serving(lambda: tiny_lm, slots=1, max_queue=15) as (url, app):
        wait_ready(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        # 16 choices of 60 tokens: one in the slot, 15 filling the queue.
        body = {k: v for k, v in LONG.items() if k != "prompt"}
        stream = client.completions.create(model="tiny", prompt="Hi", stream=True, extra_body=body)
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model="tiny", prompt="Hi", max_tokens=2)
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["type"] == "rate_limit_error"
        stream.close()  # the client goes away mid-stream: the rest never runs
        assert freed(app) < 3 * 60
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices


def test_a_non_streaming_client_that_leaves_frees_its_slot(tiny_lm):
    with serving(lambda: tiny_lm, slots=1) as (url, app):
        wait_ready(url)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/completions", json=LONG, timeout=0.5)
        assert freed(app) < 8 * 60  # of 16 * 60


def test_concurrent_requests_each_get_what_they_get_alone(client, tiny_lm):
    """Six requests at once on three slots: they join and leave a running batch, queue, and
    each reply is the library's sample for its own prompt and seed."""
    jobs = [(f"Prompt number {i} says", 6 + 3 * i, i) for i in range(6)]

    def ask(job):
        prompt, length, seed = job
        reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=length, seed=seed)
        return reply.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, jobs))
    want = [alone(tiny_lm, p, 1, 3, s, length=n)[0] for p, n, s in jobs]
    assert got == want


def test_metrics_count_what_happened(client, server):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="Hi", max_tokens=3, temperature=-1)
    text = httpx.get(server[0] + "/metrics").text
    assert 'gpt2_tf2_requests_total{status="200"}' in text
    assert 'gpt2_tf2_requests_total{status="400"}' in text
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert counts["gpt2_tf2_completion_tokens_total"] >= 3
    assert counts["gpt2_tf2_time_to_first_token_seconds_count"] >= 1
    assert counts["gpt2_tf2_slots_total"] == 3 and counts["gpt2_tf2_slots_busy"] == 0


BAD = [  # (body, status, param): one status and one OpenAI error each
    (b"{nope", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": 5}', 400, "prompt"),
    (b'{"prompt": "Hi", "max_tokens": "10"}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": -3}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": 1000000000000}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "temperature": -1}', 400, "temperature"),
    (b'{"prompt": "Hi", "top_p": 2}', 400, "top_p"),
    (b'{"prompt": "Hi", "n": 0}', 400, "n"),
    (b'{"prompt": "Hi", "seed": "x"}', 400, "seed"),
    (b'{"prompt": "Hi", "logprobs": -1}', 400, "logprobs"),
    (b'{"prompt": "Hi", "stop": 7}', 400, "stop"),
    (b'{"prompt": "Hi", "presence_penalty": 1e300}', 400, "presence_penalty"),
    (b'{"prompt": [' + b", ".join([b"11"] * 64) + b"]}", 400, "prompt"),  # fills the context
    (b'{"prompt": "Hi", "model": "gpt-4"}', 404, "model"),
    (b'{"prompt": "' + b"x" * (2 << 20) + b'"}', 413, None),
]


def test_bad_requests_each_get_one_status_and_the_server_goes_on(server, client):
    url = server[0] + "/v1/completions"
    for body, status, param in BAD:
        reply = httpx.post(url, content=body, timeout=30)
        assert reply.status_code == status, body[:60]
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["param"] == param, body[:60]
    chat = httpx.post(server[0] + "/v1/chat/completions", json={"messages": [{"role": "x"}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices


def test_logprobs_are_the_scores_per_token_log_probabilities(client, tiny_lm):
    """Each token's logprob is what scoring gives it: the model's log-probability of the token
    after the prompt and the tokens before it (`LanguageModel._token_nll_eager`, score's)."""
    import numpy as np
    import tensorflow as tf

    reply = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=10, seed=5, logprobs=1
    )
    lp = reply.choices[0].logprobs
    tokens = tiny_lm.encode(PROMPT) + tiny_lm.encode(reply.choices[0].text)
    nll = tiny_lm._token_nll_eager(tf.constant([tokens])).numpy()[0]
    want = -nll[len(tokens) - 1 - len(lp.tokens) :]
    np.testing.assert_allclose(lp.token_logprobs, want, atol=1e-4)


@pytest.mark.large
def test_fifty_concurrent_clients(tiny_lm):
    """50 clients at once on 4 slots, with their own prompts, lengths, settings, seeds, n and
    streaming, and one more that leaves mid-stream: each answer equals the library's sample for
    that request alone, none lost or duplicated, and the slots all free at the end."""
    rng = __import__("random").Random(0)
    jobs = []
    for i in range(50):
        settings = rng.choice(
            [
                {"temperature": 0},
                {"temperature": 0.8, "top_k": 20},
                {"top_p": 0.9, "presence_penalty": 0.5},
                {"repetition_penalty": 1.3, "frequency_penalty": 0.3},
            ]
        )
        prompt = " ".join(rng.choice(["red", "cat", "sky", "ran", "the"]) for _ in range(i % 7 + 1))
        jobs.append((prompt, rng.randint(3, 30), i, rng.choice([1, 1, 2]), i % 3 == 0, settings))

    with serving(lambda: tiny_lm, slots=4, max_queue=100) as (url, app):
        wait_ready(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)

        def ask(job):
            prompt, length, seed, n, stream, settings = job
            kw = dict(model="tiny", prompt=prompt, max_tokens=length, seed=seed, n=n)
            extra = {k: v for k, v in settings.items() if k in ("top_k", "repetition_penalty")}
            kw.update({k: v for k, v in settings.items() if k not in extra}, extra_body=extra)
            if not stream:
                reply = client.completions.create(**kw)
                return reply.id, [c.text for c in reply.choices]
            texts, ids = [""] * n, set()
            for chunk in client.completions.create(**kw, stream=True):
                ids.add(chunk.id)
                for c in chunk.choices:
                    texts[c.index] += c.text
            assert len(ids) == 1
            return ids.pop(), texts

        def leave():  # a client that goes away after its first tokens
            stream = client.completions.create(
                model="tiny", prompt="Goodbye", max_tokens=60, stream=True
            )
            next(iter(stream))
            stream.close()

        with concurrent.futures.ThreadPoolExecutor(51) as pool:
            gone = pool.submit(leave)
            got = list(pool.map(ask, jobs, timeout=300))
            gone.result()
        freed(app)
        metrics = httpx.get(url + "/metrics").text
        assert "gpt2_tf2_slots_busy 0" in metrics and "gpt2_tf2_queue_depth 0" in metrics
    assert len({reply_id for reply_id, _ in got}) == 50  # none lost, none answered twice
    # One idle engine for the 66 references (a new one each traced its programs again: 12 s);
    # test_engine checks that a row in a reused slot gives what it gives in a new engine.
    engine = Engine(tiny_lm, 4)
    for job, (_, texts) in zip(jobs, got):
        prompt, length, seed, n, _, settings = job
        want = alone(tiny_lm, prompt, n, 4, seed, engine, length=length, **settings)
        assert texts == want, job


def test_the_first_requests_trace_nothing_and_get_a_token_at_once(tiny_model_dir):
    """Before serving, the scheduler traces every program the first requests run at the
    narrowest cache: each power-of-two group's prompts and insert, and a step of each count of
    rows the engine steps (3 slots: 2 and 3; short prompts arriving together start as 2 + 1).
    A sequence's first token comes from a step of one token (then four at a time). A model of
    its own: the shared one's programs were traced by other tests."""
    import gpt2_tf2
    from gpt2_tf2.server.metrics import Metrics
    from gpt2_tf2.server.protocol import Choice
    from gpt2_tf2.server.scheduler import Scheduler, Sequence

    lm = gpt2_tf2.load(tiny_model_dir)
    scheduler = Scheduler(lm, slots=3, max_queue=4, metrics=Metrics())
    try:
        programs = [lm._prefill, *lm._engine_programs]
        traced = [p.experimental_get_tracing_count() for p in programs]
        ended, got = threading.Semaphore(0), {i: [] for i in range(3)}

        def deliver(event):
            if event[0] == "tokens":
                got[event[1]].append(len(event[2]))
            ended.release() if event[0] == "end" else None

        config = GenerationConfig(length=9, top_k=40)
        sequences = [
            Sequence(Choice(i, lm.encode(f"Hello number {i}"), config, (i, 0), 0), deliver)
            for i in range(3)
        ]
        scheduler.submit(sequences)
        assert all(ended.acquire(timeout=60) for _ in sequences)
        assert [p.experimental_get_tracing_count() for p in programs] == traced
        assert got == {i: [1, 4, 4] for i in range(3)}
    finally:
        scheduler.close()


def test_the_engines_thread_runs_calls_and_survives_a_failure(tiny_lm, caplog):
    """`Scheduler.call` runs work on the engine's thread and hands back its result or its
    exception; an engine that fails tells every running sequence so (an "error" event, logged
    with its traceback) and then serves the next."""
    from gpt2_tf2.server.metrics import Metrics
    from gpt2_tf2.server.protocol import Choice
    from gpt2_tf2.server.scheduler import Scheduler, Sequence

    scheduler = Scheduler(tiny_lm, slots=2, max_queue=4, metrics=Metrics())
    try:
        assert scheduler.call(lambda: 6 * 7).result(timeout=30) == 42
        with pytest.raises(ZeroDivisionError):
            scheduler.call(lambda: 1 / 0).result(timeout=30)
        events, ended = [], threading.Semaphore(0)

        def deliver(event):
            events.append(event)
            ended.release() if event[0] in ("end", "error") else None

        def run(n):
            config = GenerationConfig(length=5, temperature=0)
            choices = [Choice(i, tiny_lm.encode("Hi"), config, (0, 0), i) for i in range(n)]
            events.clear()
            scheduler.submit([Sequence(c, deliver) for c in choices])
            assert all(ended.acquire(timeout=60) for _ in choices)
            return sorted(events, key=lambda e: e[0] != "error")

        step, calls = scheduler.engine.step, []
        scheduler.engine.step = lambda n: calls.append(n) or 1 / 0  # the engine breaks once
        failed = run(2)
        scheduler.engine.step = step
        assert [e[0] for e in failed] == ["error", "error"]
        assert failed[0][2] == "the engine failed: division by zero"
        assert "the engine failed" in caplog.text and "ZeroDivisionError" in caplog.text
        assert scheduler.load() == (0, 0)  # its slots are free again
        assert [e[0] for e in run(1)][-1] == "end"  # and the next is served
    finally:
        scheduler.close()


def test_the_guides_openai_example_runs(server, capsys):
    """docs/serving.md's example with OpenAI's client, run against this server."""
    import os
    import re

    from conftest import REPO

    text = open(os.path.join(REPO, "docs", "serving.md"), encoding="utf-8").read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "from openai" in b)
    block = block.replace("http://127.0.0.1:8000", server[0]).replace('"demo"', '"tiny"')
    exec(compile(block, "docs/serving.md", "exec"), {})
    assert "CompletionUsage(" in capsys.readouterr().out
