"""Streaming: `lm.stream()` yields a sample's text as it is made, in whole characters, and the
pieces join to exactly what `generate()` returns for the same seed; the CLI prints that way."""

from __future__ import annotations

import pytest

from conftest import run_in_process
from gpt2_tf2.cli.sample import HEADER


@pytest.fixture()
def lm(tiny_lm):
    return tiny_lm  # shared: read only


@pytest.mark.parametrize(
    "prompt, settings",
    [
        ("Привет, мир! Hello", dict(top_k=40, seed=3)),
        ("Hello", dict(temperature=0)),
        (None, dict(seed=9, length=20)),
        ("Hello", dict(seed=1, top_p=0.9, repetition_penalty=1.3, no_repeat_ngram_size=2)),
    ],
)
def test_stream_equals_generate(lm, prompt, settings):
    settings = {"length": 40, **settings}
    pieces = list(lm.stream(prompt, **settings))
    assert "".join(pieces) == lm.generate(prompt, **settings)[0]
    assert len(pieces) >= 2  # in pieces, not all at the end


def test_stream_stops_at_endoftext(lm):
    eot = lm.encoder.eot_token
    # A stop token the sample certainly meets: one it draws, seen there for the first time.
    settings = dict(length=40, top_k=40, seed=3)
    first = next(lm.generate_tokens(lm.encoder.encode("Hello"), **settings))[0]
    i = next(i for i in range(2, 40) if first[i] not in first[:i])
    lm.encoder.eot_token = first[i]
    try:
        text = "".join(lm.stream("Hello", stop_at_endoftext=True, **settings))
        assert text == lm.encoder.decode(first[:i])
    finally:
        lm.encoder.eot_token = eot


def test_pieces_are_whole_characters(lm, monkeypatch):
    """A token may end inside a character's UTF-8 bytes: those wait for the next piece."""
    from gpt2_tf2.tokenizer.bpe import bytes_to_unicode

    byte_token = {b: lm.encoder.encoder[c] for b, c in bytes_to_unicode().items()}
    data = "ёж 🙂".encode()
    chunks = [[byte_token[b]] for b in data]  # one byte per piece

    monkeypatch.setattr(lm, "stream_tokens", lambda tokens, config=None, **settings: iter(chunks))
    pieces = list(lm.stream("x"))
    assert "".join(pieces) == "ёж 🙂"
    assert pieces == ["ё", "ж", " ", "🙂"]


def test_cli_prints_what_generate_returns(lm, tiny_model_dir):
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.sample",
            "--model_name",
            tiny_model_dir,
            "--prompt",
            "Hi",
            "--length",
            "15",
            "--nsamples",
            "2",
            "--seed",
            "4",
            "--top_k",
            "20",
        ]
    )
    assert done.returncode == 0, done.stderr
    texts = lm.generate("Hi", length=15, nsamples=2, batch_size=1, seed=4, top_k=20)
    want = "".join(f"{HEADER.format(i + 1)}\n{t}\n" for i, t in enumerate(texts))
    assert done.stdout == want
