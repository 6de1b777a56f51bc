"""The server's text as tokens stream (`server.text.TextStream`): whole characters only, cut
before the first stop sequence, text that may begin one held back until it cannot, and the
tokens released with exactly the text they make. With GPT-2's genuine vocabulary; no model."""

from __future__ import annotations

import pytest

from gpt2_tf2.server.text import TextStream


@pytest.fixture(scope="module")
def encoder(vocab_files):
    import os

    from gpt2_tf2.tokenizer.vocabulary import load_encoder

    return load_encoder(os.path.dirname(vocab_files["encoder.json"]))


def feed_one_by_one(encoder, text, stops):
    stream = TextStream(encoder, stops)
    pieces, tokens = [], []
    for token in encoder.encode(text):
        piece, released, _ = stream.feed([token])
        pieces.append(piece)
        tokens += released
    piece, released, _ = stream.flush()
    return stream, pieces + [piece], tokens


def test_without_stops_the_text_is_the_decoding(encoder):
    text = "Hello world, naïve café — привет 🙂!"
    stream, pieces, tokens = feed_one_by_one(encoder, text, [])
    assert "".join(pieces) == text == stream.text
    assert tokens == encoder.encode(text)
    assert all("\ufffd" not in p for p in pieces)  # a split character waits for its bytes


def test_a_stop_sequence_cuts_and_is_never_shown(encoder):
    text = "The cat sat.\nUser: hi there"
    stream, pieces, tokens = feed_one_by_one(encoder, text, ["\nUser:"])
    assert "".join(pieces) == "The cat sat." and stream.stopped
    assert all("\n" not in p for p in pieces)  # "\n" was held back until it was a stop
    assert encoder.decode(tokens).startswith("The cat sat.")


def test_held_back_text_is_released_when_it_is_not_a_stop(encoder):
    stream = TextStream(encoder, ["STOP!"])
    first, _, _ = stream.feed(encoder.encode("go ST"))
    assert first == "go"  # "ST" may begin the stop sequence: its token " ST" waits whole
    second, _, _ = stream.feed(encoder.encode("ILL here"))
    assert first + second + stream.flush()[0] == "go STILL here" and not stream.stopped


def test_the_earliest_of_several_stops_wins(encoder):
    stream = TextStream(encoder, ["zzz", "b"])
    text, _, _ = stream.feed(encoder.encode("aaa b zzz"))
    assert text == "aaa " and stream.stopped
    assert stream.feed(encoder.encode("more")) == ("", [], [])


def test_scores_travel_with_their_tokens(encoder):
    stream = TextStream(encoder, ["."])
    tokens = encoder.encode("One two. Three")
    scores = [f"s{i}" for i in range(len(tokens))]
    text, released, kept = stream.feed(tokens, scores)
    assert text == "One two" and released == tokens[: len(kept)]
    assert kept == scores[: len(released)] and encoder.decode(released).startswith("One two")


def test_a_refusal_names_the_requests_fields():
    """A library message's `name` is said as the request's field, in any refusal."""
    from gpt2_tf2.server.protocol import APIError

    e = APIError(400, "prompt (9 tokens) + `length` (60) exceeds; lower `length` or `top_p`")
    assert e.message == "prompt (9 tokens) + max_tokens (60) exceeds; lower max_tokens or top_p"
    assert str(e) == e.message
