"""Text past the context: a sliding window (the last n_ctx - stride tokens become the prompt
again), at batch > 1, with every strategy; the first window is a plain generation."""

from __future__ import annotations

import pytest

from conftest import run_in_process


@pytest.fixture()
def lm(tiny_lm):
    return tiny_lm  # shared: read only


def test_first_window_is_a_plain_generation(lm):
    prompt = lm.encoder.encode("Hello there, friend")
    room = 64 - len(prompt)
    settings = dict(top_k=40, seed=3, batch_size=3, nsamples=3)
    plain = next(lm.generate_tokens(prompt, length=room, **settings))
    long = next(lm.generate_tokens(prompt, length=150, **settings))
    assert [len(r) for r in long] == [150] * 3
    assert [r[:room] for r in long] == plain
    assert len({tuple(r[room:]) for r in long}) == 3  # rows go on differently


@pytest.mark.parametrize(
    "stride",
    [pytest.param(8, marks=pytest.mark.large), 32, pytest.param(63, marks=pytest.mark.large)],
)
def test_after_a_slide_the_window_is_the_prompt(lm, stride):
    """Greedy, so each window's continuation is a plain greedy generation after the last
    64 - stride tokens."""
    prompt = lm.encoder.encode("Once upon a time")
    tokens = next(lm.generate_tokens(prompt, length=100, temperature=0, window_stride=stride))[0]
    made = 64 - len(prompt)
    while made < 100:
        window = (prompt + tokens)[: len(prompt) + made][-(64 - stride) :]
        n = min(stride, 100 - made)
        again = next(lm.generate_tokens(window, length=n, temperature=0))[0]
        assert tokens[made : made + n] == again
        made += n


def test_stream_and_processors_past_the_context(lm):
    settings = dict(length=103, top_p=0.9, seed=5, repetition_penalty=1.2, window_stride=20)
    text = lm.generate("Hi", **settings)[0]
    assert "".join(lm.stream("Hi", **settings)) == text
    # Three windows of the same shapes (63, 20, 20 tokens: no fourth, shorter one to compile).
    # A re-encoding may merge a few tokens.
    assert len(lm.encoder.encode(text)) >= settings["length"] - 10 > lm.hparams.n_ctx


def test_cli_length_past_the_context(tiny_model_dir):
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.sample",
            "--model_name",
            tiny_model_dir,
            "--length",
            "100",
            "--seed",
            "1",
            "--window_stride",
            "16",
            "--batch_size",
            "2",
            "--nsamples",
            "2",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SAMPLE") == 2
