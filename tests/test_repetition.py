"""Repetition control: CTRL's repetition penalty and the ban on repeated n-grams, as logits
processors every strategy applies (hand-computed cases here; transformers is the reference in
tests/test_reference.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_in_process
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import no_repeat_ngram, repetition_penalty
from gpt2_tf2.generation.settings import Settings

INF = float("inf")
LOGITS = tf.constant([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])


@functools.cache  # one function per processor and mode: the settings are tensors, no retrace
def compiled(processor, xla):
    return tf.function(processor, jit_compile=xla, autograph=False)


def run(processor, history, length, xla=False, **settings):
    out = compiled(processor, xla)(
        LOGITS, Settings.make(**settings), History(tf.constant([history]), tf.constant(length))
    )
    return out.numpy()[0].tolist()


@pytest.mark.parametrize("xla", [False, True])
def test_repetition_penalty_by_hand(xla):
    # Seen: 1, 3, 5 (position 4 on is not history yet). Positive logits / 2, negative * 2.
    got = run(repetition_penalty, [1, 3, 3, 5, 0, 4], 4, xla, repetition_penalty=2.0)
    assert got == [2.0, -2.0, 0.5, 1.5, -2.0, 0.5]
    # Below 1 it encourages repeats; 1 is off.
    got = run(repetition_penalty, [1, 3, 3, 5, 0, 4], 4, xla, repetition_penalty=0.5)
    assert got == [2.0, -0.5, 0.5, 6.0, -2.0, 2.0]
    assert run(repetition_penalty, [1, 3], 2, xla) == LOGITS.numpy()[0].tolist()


@pytest.mark.parametrize("xla", [False, True])
def test_no_repeat_ngram_by_hand(xla):
    history, length = [1, 2, 3, 1, 2, 0, 0], 5  # ... 1 2 | next
    expect = {
        0: [2.0, -1.0, 0.5, 3.0, -2.0, 1.0],  # off
        1: [2.0, -INF, -INF, -INF, -2.0, 1.0],  # no token twice: 1, 2, 3 banned
        2: [2.0, -1.0, 0.5, -INF, -2.0, 1.0],  # "2 3" was seen: 3 banned after 2
        3: [2.0, -1.0, 0.5, -INF, -2.0, 1.0],  # "1 2 3" was seen: 3 banned after "1 2"
        4: [2.0, -1.0, 0.5, 3.0, -2.0, 1.0],  # "3 1 2" never came before
        6: [2.0, -1.0, 0.5, 3.0, -2.0, 1.0],  # longer than the history
    }
    for n, want in expect.items():
        assert run(no_repeat_ngram, history, length, xla, no_repeat_ngram_size=n) == want, n
    # Two earlier occurrences of the prefix ban both continuations.
    got = run(no_repeat_ngram, [5, 1, 5, 2, 5, 0], 5, xla, no_repeat_ngram_size=2)
    assert got == [2.0, -INF, -INF, 3.0, -2.0, 1.0]


def test_sampling_never_repeats_an_ngram(tiny_lm):
    lm = tiny_lm
    prompt = lm.encoder.encode("the the the the the")
    rows = next(
        lm.generate_tokens(prompt, length=40, batch_size=3, top_k=3, seed=1, no_repeat_ngram_size=2)
    )

    def repeats(seq):  # generated tokens that complete a bigram seen before (prompt included)
        return [
            i
            for i in range(len(prompt), len(seq))
            if (seq[i - 1], seq[i]) in set(zip(seq[: i - 1], seq[1:i]))
        ]

    assert all(repeats(prompt + row) == [] for row in rows)
    plain = next(lm.generate_tokens(prompt, length=40, batch_size=3, top_k=3, seed=1))
    assert any(repeats(prompt + row) for row in plain)  # without the ban, it repeats


def test_sample_flags(tiny_model_dir):
    args = ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--length", "8"]
    done = run_in_process(
        [
            *args,
            "--temperature",
            "0",
            "--repetition_penalty",
            "1.3",
            "--no_repeat_ngram_size",
            "3",
            "--prompt",
            "Hello",
        ]
    )
    assert done.returncode == 0 and "SAMPLE 1" in done.stdout, done.stderr
    for flag, value, words in (
        ("--repetition_penalty", "0", "repetition_penalty must be > 0"),
        ("--no_repeat_ngram_size", "-1", "no_repeat_ngram_size must be an integer from 0 (off) to"),
        (
            "--no_repeat_ngram_size",
            "1.5",
            "no_repeat_ngram_size must be an integer from 0 (off) to",
        ),
    ):
        bad = run_in_process([*args, flag, value])
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
    assert "--no_repeat_ngram_size" in run_in_process([*args, "--help"]).stdout


def test_penalty_off_changes_nothing(tiny_lm):
    lm = tiny_lm
    prompt = lm.encoder.encode("Hello world")
    a = next(lm.generate_tokens(prompt, length=20, top_k=5, seed=3))
    b = next(lm.generate_tokens(prompt, length=20, top_k=5, seed=3, repetition_penalty=1.0))
    c = next(lm.generate_tokens(prompt, length=20, top_k=5, seed=3, repetition_penalty=1.5))
    assert a == b and a != c
    assert np.all(np.asarray(a) >= 0)
