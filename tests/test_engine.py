"""The decode engine, on both backends (xla, tflite): rows that join a running batch between
steps and leave it produce exactly the tokens each gives alone (greedy and sampled, with their
own settings, seeds, prompt lengths and lengths); cancelling one changes no other row's tokens.
TFLite's rows equal XLA's (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation import loop
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.engine import Engine, run_alone
from gpt2_tf2.generation.settings import Settings

SLOTS = 3
REQUESTS = [  # (prompt, config): lengths, settings and seeds of their own
    ("Hello there", GenerationConfig(length=12, temperature=0)),
    (
        "A much longer prompt than the others, by a fair margin",
        GenerationConfig(length=20, top_k=40, seed=5),
    ),
    (
        "Once",
        GenerationConfig(
            length=9,
            top_p=0.9,
            temperature=0.8,
            seed=6,
            repetition_penalty=1.3,
            presence_penalty=0.5,
        ),
    ),
    ("Greedy but no repeats", GenerationConfig(length=16, temperature=0, no_repeat_ngram_size=2)),
    ("", GenerationConfig(length=7, seed=9)),  # unconditional
    (
        "Short one",
        GenerationConfig(
            length=25,
            top_k=3,
            seed=1,
            no_repeat_ngram_size=3,
            frequency_penalty=0.7,
            min_new_tokens=5,
            stop_at_endoftext=True,
        ),
    ),
]


@pytest.fixture(scope="module", params=["xla", pytest.param("tflite", marks=pytest.mark.large)])
def lm(request, tiny_lm, tiny_model_dir):
    """The tiny model on each backend (TFLite: float32, its step converted once, cached). The
    default tier runs TFLite's engine through test_lite's generate/stream tests; the joins and
    cancels on TFLite are the large tier's."""
    if request.param == "xla":
        return tiny_lm
    from gpt2_tf2.generation.language_model import load

    return load(tiny_model_dir, backend="tflite")


@pytest.fixture(scope="module")
def alone(lm):
    return [run_alone(lm, lm.encode(p), c, SLOTS) for p, c in REQUESTS]


def test_tflite_rows_equal_xla_rows(tiny_lm, lm, alone):
    """Each request alone on TFLite gives XLA's tokens: the same processors and strategy, on
    logits within 1e-4 (tests/test_lite.py)."""
    assert alone == [run_alone(tiny_lm, tiny_lm.encode(p), c, SLOTS) for p, c in REQUESTS]


@pytest.mark.parametrize("schedule_seed", [0, 1])
def test_rows_joining_at_random_steps_equal_each_alone(lm, alone, schedule_seed):
    rng = np.random.default_rng(schedule_seed)
    engine = Engine(lm, SLOTS)
    waiting = list(range(len(REQUESTS)))
    rng.shuffle(waiting)
    slot_of, out, joined_at, clock = {}, {}, {}, 0
    while waiting or engine.busy():
        # Join a waiting request now and then, while a slot is free: at random steps.
        if waiting and len(engine.busy()) < SLOTS and rng.random() < 0.6:
            i = waiting.pop()
            prompt, config = REQUESTS[i]
            slot_of[engine.add(lm.encode(prompt), config)] = i
            out[i], joined_at[i] = [], clock
            continue
        for slot, tokens in engine.step(int(rng.integers(1, 4))).items():
            out[slot_of[slot]] += tokens
        clock += 1
        for slot in engine.finished():
            engine.remove(slot)
    assert out == dict(enumerate(alone))
    assert len(set(joined_at.values())) > 2  # they did join at different steps


def test_cancelling_a_row_changes_no_other(lm, alone):
    engine = Engine(lm, SLOTS)
    slots = [engine.add(lm.encode(p), c) for p, c in REQUESTS[:3]]
    out = {s: [] for s in slots}
    for s, tokens in engine.step(3).items():
        out[s] += tokens
    engine.remove(slots[1])  # cancelled after 3 tokens
    assert out[slots[1]] == alone[1][:3]
    late = engine.add(lm.encode(REQUESTS[5][0]), REQUESTS[5][1])  # takes the freed slot
    assert late == slots[1]
    out[late] = []
    while len(engine.finished()) < len(engine.busy()):
        for s, tokens in engine.step(5).items():
            out[s] += tokens
    assert [out[slots[0]], out[slots[2]], out[late]] == [alone[0], alone[2], alone[5]]


def test_rows_started_together_equal_each_alone(lm, alone):
    """add_many: the prompts of rows that start together run as one batch, right-padded to the
    longest; each row's tokens are still those it gives alone. A second group takes the slots
    the first freed."""
    engine = Engine(lm, SLOTS)
    out = []
    for group in (REQUESTS[:SLOTS], REQUESTS[SLOTS:]):
        slots = engine.add_many([(lm.encode(p), c) for p, c in group])
        assert slots == list(range(SLOTS))
        got = {s: [] for s in slots}
        while len(engine.finished()) < len(slots):
            for s, tokens in engine.step(4).items():
                got[s] += tokens
        out += [got[s] for s in slots]
        for s in slots:
            engine.remove(s)
    assert out == alone
    assert len({len(lm.encode(p)) for p, _ in REQUESTS[:SLOTS]}) == SLOTS  # padded rows


def test_run_alone_reuses_an_idle_engine(lm, alone):
    """run_alone in one engine, request after request (each freed at its end), gives what a new
    engine gives each; an engine with a busy slot, or of another size, is refused."""
    engine = Engine(lm, SLOTS)
    assert [run_alone(lm, lm.encode(p), c, SLOTS, engine) for p, c in REQUESTS] == alone
    assert engine.busy() == []
    engine.add(lm.encode("busy"), GenerationConfig(length=2))
    for other in (engine, Engine(lm, SLOTS + 1)):
        with pytest.raises(UserError, match="an idle engine of 3 slots"):
            run_alone(lm, lm.encode("x"), GenerationConfig(length=2), SLOTS, other)


def test_a_group_that_cannot_start_starts_none(lm):
    engine = Engine(lm, 2)
    good = ([464], GenerationConfig(length=3))
    with pytest.raises(UserError, match="3 sequences to start but 2 of 2 slots free"):
        engine.add_many([good] * 3)
    with pytest.raises(UserError, match="token id 99999 is not a token"):
        engine.add_many([good, ([99999], GenerationConfig(length=3))])
    assert engine.busy() == [] and engine.add_many([]) == []
    assert engine.add_many([good, good]) == [0, 1]


def test_stop_token_and_bad_requests(lm):
    engine = Engine(lm, 1)
    with pytest.raises(UserError, match="exceeds the engine's 64 positions"):
        engine.add(list(range(60)), GenerationConfig(length=10))
    with pytest.raises(UserError, match="token id 99999 is not a token"):
        engine.add([99999], GenerationConfig(length=2))
    with pytest.raises(UserError, match="beam search runs in a BeamSearch"):
        engine.add([1], GenerationConfig(num_beams=2, length=2))
    slot = engine.add([464], GenerationConfig(length=30, temperature=0, stop_at_endoftext=True))
    with pytest.raises(UserError, match="all 1 slots are busy"):
        engine.add([464], GenerationConfig(length=2))
    tokens = []
    while slot not in engine.finished():
        tokens += engine.step(7)[slot]
    assert 50256 not in tokens and 0 < len(tokens) <= 30
    engine.remove(slot)
    with pytest.raises(UserError, match="slot 0 is not busy"):
        engine.remove(slot)


def test_greedy_alone_is_the_fixed_batch_loops_greedy(tiny_lm):
    """One slot: the engine's greedy tokens are those of the fixed-batch loop the SavedModel
    runs (`loop.decode`)."""
    prompt = tiny_lm.encode("Hello there")
    config = GenerationConfig(length=20, temperature=0, repetition_penalty=1.2)
    settings = Settings.make(config, stop_token=-1)
    context = tf.constant([prompt], tf.int32)
    want = loop.decode(tiny_lm.model, context, len(prompt), 20, settings, slots=20)
    config = GenerationConfig.of(config, stop_at_endoftext=False)
    assert run_alone(tiny_lm, prompt, config, slots=1) == want.numpy()[0].tolist()


def test_logprobs_are_the_models_own(lm, tiny_lm, alone):
    """An engine made with logprobs=k keeps each token's log-probability and the k most likely
    tokens at its step: those of the model's logits over the whole text in one forward pass
    (XLA's model, for either backend), before any processor; rows joining later get theirs.
    A row added with scores=False keeps none (asking is a UserError), its tokens those it gives
    alone, and the steps it runs while no row wants scores leave the scores' arrays untouched."""
    engine = Engine(lm, SLOTS, logprobs=3)
    plain = engine.add(lm.encode(REQUESTS[0][0]), REQUESTS[0][1], scores=False)
    got, plain_tokens = {}, engine.step(2)[plain]
    assert not any(np.abs(a).max() for a in engine._store.scores())  # computed for no one
    slot_of = {1: engine.add(lm.encode(REQUESTS[1][0]), REQUESTS[1][1])}
    got[slot_of[1]] = ([], [])
    for step in range(12):
        if step == 3:  # a second row joins a running engine
            slot_of[2] = engine.add(lm.encode(REQUESTS[2][0]), REQUESTS[2][1])
            got[slot_of[2]] = ([], [])
        for slot, tokens in engine.step(2).items():
            if slot == plain:
                plain_tokens += tokens
                with pytest.raises(UserError, match="keeps no log-probabilities"):
                    engine.scores(slot)
                continue
            got[slot][0].extend(tokens)
            got[slot][1].extend(engine.scores(slot))
            assert len(engine.scores(slot)) == len(tokens)
    assert plain_tokens == alone[0]
    for i, slot in slot_of.items():
        prompt, (tokens, scores) = lm.encode(REQUESTS[i][0]), got[slot]
        assert tokens == alone[i]
        text = tf.constant([prompt + tokens])
        logp = tf.nn.log_softmax(tiny_lm.model(text)["logits"][0]).numpy()
        want = logp[len(prompt) - 1 : -1]  # the distribution each token was drawn at
        chosen = [s.logprob for s in scores]
        np.testing.assert_allclose(chosen, want[np.arange(len(tokens)), tokens], atol=1e-4)
        for row, s in zip(want, scores):
            ids = [t for t, _ in s.top]
            assert ids == np.argsort(-row)[:3].tolist()
            np.testing.assert_allclose([p for _, p in s.top], row[ids], atol=1e-4)
    with pytest.raises(UserError, match="keeps no log-probabilities"):
        Engine(lm, 1).scores(0)


def test_the_fewest_rows_a_step_runs_are_those_from_which_rows_round_alike():
    """A busy-rows step runs at least `exact_from`'s count: the smallest step size from which
    every larger one gives a row the same products to the bit (else a request's tokens would
    depend on who else runs); the largest when none below it agrees."""
    from gpt2_tf2.generation.xla import exact_from, step_sizes

    assert step_sizes(1) == [1] and step_sizes(3) == [2, 3] and step_sizes(16) == [2, 4, 8, 16]
    assert step_sizes(20) == [2, 4, 8, 16, 20]

    def kernels(same_from):  # each size's products; sizes below `same_from` round otherwise
        return lambda m: [np.full([m, 3], 1.0 if m >= same_from else 1.0 + m * 2.0**-20)]

    sizes = [2, 4, 8, 16]
    assert exact_from(kernels(2), sizes) == 2
    assert exact_from(kernels(8), sizes) == 8
    assert exact_from(kernels(99), sizes) == 16
    # 4 agrees with 16 but 8 does not: the rows would round otherwise at 8, so from 16.
    odd = lambda m: [np.full([m, 3], 1.0 + (m == 8) * 2.0**-20)]  # noqa: E731
    assert exact_from(odd, sizes) == 16


def servers_engine(lm):
    """An engine as the server makes it: a growing cache, busy rows, log-probabilities kept."""
    return Engine(lm, SLOTS, grow_cache=True, busy_rows=True, logprobs=1)


def run_on(engine, lm, indices, out):
    """REQUESTS[i] for i in `indices` through `engine`, each joining when a slot frees: out[i]
    gets its (token, log-probability) pairs."""
    slot_of, waiting = {}, list(indices)
    while waiting or engine.busy():
        while waiting and len(engine.busy()) < SLOTS:
            i = waiting.pop(0)
            slot_of[engine.add(lm.encode(REQUESTS[i][0]), REQUESTS[i][1])] = i
            out[i] = []
        for slot, tokens in engine.step(2).items():
            scores = [s.logprob for s in engine.scores(slot)]
            out[slot_of[slot]] += list(zip(tokens, scores))
        for slot in engine.finished():
            engine.remove(slot)


def test_a_servers_engine_gives_the_same_tokens(tiny_lm, alone):
    """A server's engine (grow_cache, busy_rows): the cache starts narrow, widens as rows grow
    and narrows when the engine empties, and a step runs only the slots up to the last running
    one; each row's tokens are those it gives alone, and so are its log-probabilities, to the
    bit (a step of one row would round differently from a step of several)."""
    engine = servers_engine(tiny_lm)
    store = engine._store
    rows_run, widths = [], set()
    rows_of = store._rows

    def rows(running):  # what each step runs: its rows, and the cache's width by then
        widths.add(store._cache_width())
        rows_run.append(rows_of(running))
        return rows_run[-1]

    store._rows = rows
    together = {}
    run_on(engine, tiny_lm, range(len(REQUESTS)), together)
    assert {i: [t for t, _ in pairs] for i, pairs in together.items()} == dict(enumerate(alone))
    assert min(widths) < engine.cache_len and store.state is None  # narrow; reset when empty
    # Slots 0-1 ran without slot 2 where the CPU's kernels give a row the same bits in a step of
    # 2 rows as of 3 (TensorFlow 2.21 here; `exact_from` finds out), else every step ran all 3.
    assert min(rows_run) == store.fewest and max(rows_run) == SLOTS
    by_itself = {}
    for i in range(len(REQUESTS)):
        run_on(servers_engine(tiny_lm), tiny_lm, [i], by_itself)
    assert together == by_itself


def test_the_token_choice_is_traced_once_for_every_step_program(tiny_model_dir, monkeypatch):
    """The processors and strategies (`choice.choose_rows`, a pure function of tensors) are
    traced once per process for a vocabulary and dtypes, not once per step program: the step
    programs of two loads of the model, of 1, 2 and 4 rows and two cache widths call one trace
    (each step program traced its own before: 1.2-1.8 s a step program's trace then, 0.34-0.8 s
    now, on a 2-core CPU). Traced only, not run: the engine's tests above check their tokens."""
    from gpt2_tf2.generation import choice
    from gpt2_tf2.generation.language_model import load
    from gpt2_tf2.generation.xla import XlaSlots

    traced = []
    plain = choice.choose_rows

    def counted(*args):
        traced.append(args[0].shape)
        return plain(*args)

    monkeypatch.setattr(choice, "_traced", {})
    monkeypatch.setattr(choice, "choose_rows", counted)
    programs = 0
    for shapes in (((1, 64), (4, 32)), ((2, 64),)):
        lm = load(tiny_model_dir)  # a load of its own: its step programs are its own
        for slots, cache_len in shapes:
            store = XlaSlots(lm, slots, cache_len)
            store._hold(lm.model.init_cache(slots, cache_len))
            store.state = store._empty()
            assert store._step_program(slots) is not None
            programs += 1
    assert programs == 3 and len(traced) == 1, f"traced {len(traced)} times"
