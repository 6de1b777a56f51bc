"""OpenAI's presence and frequency penalties and the stop token's ban before min_new_tokens, as
logits processors every strategy applies: hand-computed cases (transformers has no presence or
frequency penalty; OpenAI's API reference gives the formula), for a batch-wide setting and for
rows with their own (a decode engine's slots), eager and under XLA."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import (
    PROCESSORS,
    apply_processors,
    min_new_tokens,
    presence_frequency_penalty,
)
from gpt2_tf2.generation.settings import Settings

INF = float("inf")
LOGITS = [2.0, -1.0, 0.5, 3.0, -2.0, 1.0]


@functools.cache
def compiled(processor, xla):
    return tf.function(processor, jit_compile=xla, autograph=False)


def run(processor, xla, logits, settings, history):
    return compiled(processor, xla)(tf.constant(logits), settings, history).numpy().tolist()


@pytest.mark.parametrize("xla", [False, True])
def test_presence_and_frequency_by_hand(xla):
    # Prompt 3 3 (columns 0-1, not counted); output 1 5 1 (columns 2-4); column 5 is not yet.
    tokens = tf.constant([[3, 3, 1, 5, 1, 2]])
    history = History(tokens, tf.constant(5), 0, tf.constant(2))
    settings = Settings.make(presence_penalty=0.5, frequency_penalty=0.25)
    got = run(presence_frequency_penalty, xla, [LOGITS], settings, history)[0]
    # token 1: twice -> -1 - 2 * 0.25 - 0.5; token 5: once -> 1 - 0.25 - 0.5; 3 (prompt) and 2
    # (past the length) untouched.
    assert got == [2.0, -2.0, 0.5, 3.0, -2.0, 0.25]
    # Negative values favour repeats; zero is off.
    settings = Settings.make(presence_penalty=-1.0)
    assert run(presence_frequency_penalty, xla, [LOGITS], settings, history)[0] == [
        2.0,
        0.0,
        0.5,
        3.0,
        -2.0,
        2.0,
    ]
    assert run(presence_frequency_penalty, xla, [LOGITS], Settings.make(), history)[0] == LOGITS


@pytest.mark.parametrize("xla", [False, True])
def test_penalties_per_row(xla):
    # Two slots at their own positions: row 0's output is columns 1..3, row 1's column 2 only.
    tokens = tf.constant([[4, 0, 0, 2, 9], [0, 0, 5, 7, 7]])
    history = History(tokens, tf.constant([4, 3]), 0, tf.constant([1, 2]))
    rows = Settings.rows(
        [
            Settings.make(frequency_penalty=1.0),
            Settings.make(presence_penalty=2.0, frequency_penalty=-0.5),
        ]
    )
    got = run(presence_frequency_penalty, xla, [LOGITS, LOGITS], rows, history)
    assert got[0] == [0.0, -1.0, -0.5, 3.0, -2.0, 1.0]  # 0 twice, 2 once; 4 is the prompt
    assert got[1] == [2.0, -1.0, 0.5, 3.0, -2.0, -0.5]  # 5 once: 1 - 2 + 0.5; 7 not yet


@pytest.mark.parametrize("xla", [False, True])
def test_min_new_tokens_bans_the_stop_token(xla):
    tokens = tf.constant([[1, 2, 3, 4, 0, 0]])
    for generated, banned in ((0, True), (2, True), (3, False)):
        history = History(tokens, tf.constant(2 + generated), 0, tf.constant(2))
        settings = Settings.make(min_new_tokens=3, stop_token=5)
        got = run(min_new_tokens, xla, [LOGITS], settings, history)[0]
        assert got == (LOGITS[:5] + [-INF] if banned else LOGITS), generated
    # No stop token (-1): nothing to ban; rows with their own minimum.
    history = History(tokens, tf.constant(2), 0, tf.constant(2))
    assert run(min_new_tokens, xla, [LOGITS], Settings.make(min_new_tokens=3), history)[0] == LOGITS
    rows = Settings.rows(
        [
            Settings.make(min_new_tokens=1, stop_token=0),
            Settings.make(min_new_tokens=0, stop_token=0),
        ]
    )
    history = History(tf.constant([[7, 7], [7, 7]]), tf.constant([1, 1]), 0, tf.constant([1, 1]))
    got = run(min_new_tokens, xla, [LOGITS, LOGITS], rows, history)
    assert got == [[-INF] + LOGITS[1:], LOGITS]


def test_processors_order_and_defaults_are_off():
    assert PROCESSORS[0] is min_new_tokens  # the ban first, as vLLM applies it
    logits = tf.constant([LOGITS])
    history = History(tf.constant([[1, 3, 5, 1]]), tf.constant(4), 0, tf.constant(1))
    out = apply_processors(logits, Settings.make(stop_token=3), history)
    np.testing.assert_array_equal(out.numpy(), logits.numpy())


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"presence_penalty": 2.5}, "`presence_penalty` must be a number in [-2, 2]"),
        ({"frequency_penalty": "1"}, "`frequency_penalty` must be a number in [-2, 2]"),
        ({"min_new_tokens": -1}, "`min_new_tokens` must be an integer"),
    ],
)
def test_bad_values(settings, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GenerationConfig(**settings).validate()


def test_frequency_penalty_steers_greedy_decoding(tiny_lm):
    """Through `generate_tokens` on the engine: a large frequency penalty makes greedy decoding
    avoid every token it already chose, which plain greedy decoding repeats."""
    prompt = tiny_lm.encoder.encode("the the the")
    plain = next(tiny_lm.generate_tokens([prompt], GenerationConfig(length=20, temperature=0)))
    assert len(set(plain[0])) < 20  # the tiny random model loops
    config = GenerationConfig(length=20, temperature=0, frequency_penalty=2.0)
    # Penalised by 2 per occurrence: the tiny model's logits differ by less, so no token twice.
    out = next(tiny_lm.generate_tokens([prompt], config))[0]
    assert len(set(out)) == len(out) == 20
