"""Beam search on a hand-made Markov model whose best sequence greedy decoding misses (hand-
computed), and on a real model with one beam, which is greedy decoding. transformers' beam
search is the reference in tests/test_reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.generation.beam import beam_search
from gpt2_tf2.generation.loop import prefill
from gpt2_tf2.generation.settings import Settings

A, B, STOP, START = 0, 1, 2, 3
TINY = 1e-6
# P(next | last): from START, a is likelier than b; but after b comes b almost surely.
TABLE = np.log(
    np.array(
        [
            [0.3, 0.25, 0.45, TINY],  # after a: the end is likeliest
            [0.06, 0.9, 0.04, TINY],  # after b: b again, almost surely
            [0.25, 0.25, 0.5, TINY],  # after the end (never continued)
            [0.55, 0.4, 0.05, TINY],  # after START: a is likelier than b
        ],
        np.float32,
    )
)


class MarkovModel:
    """Logits = log P(next | last token); a dummy cache in GPT-2's layout (one head)."""

    def init_cache(self, batch, max_len):
        return [(tf.zeros([batch, max_len, 1]), tf.zeros([batch, max_len, 1]))]

    def __call__(self, tokens, cache, pos, logits_at=None):
        last = tokens[:, -1] if logits_at is None else tf.gather(tokens, logits_at, axis=1)
        return {"logits": tf.gather(tf.constant(TABLE), last)[:, None, :], "cache": cache}


def run(k, length, length_penalty=0.0, early_stopping=False, xla=False):
    model = MarkovModel()

    @tf.function(jit_compile=xla, autograph=False)
    def fn():
        context = tf.fill([k, 1], START)
        logits, cache = prefill(model, context, tf.constant(1), 1 + length)
        settings = Settings.make(stop_token=STOP)
        return beam_search(
            model,
            logits,
            cache,
            context,
            tf.constant(1),
            tf.constant(length),
            settings,
            length,
            k,
            1,
            length_penalty,
            early_stopping,
        )

    out, scores = fn()
    return out.numpy()[0].tolist(), scores.numpy()[0].tolist()


@pytest.mark.parametrize("xla", [False, True])
def test_beams_find_what_greedy_misses(xla):
    # Greedy: a (0.55), then the end (0.45): 0.2475. Two beams keep b (0.4) as well, and find
    # b b: 0.36. Both hypotheses end at the second token (the length), scored by log P.
    rows, scores = run(2, 2, xla=xla)
    assert rows == [[B, B], [A, STOP]]
    np.testing.assert_allclose(scores, [math.log(0.36), math.log(0.2475)], rtol=1e-5)
    # One beam is greedy decoding.
    assert run(1, 2, xla=xla)[0] == [[A, STOP]]


def test_hypotheses_end_at_the_stop_token_with_the_length_penalty():
    """Three beams, three tokens. Finished on the way (among the best three of a step): STOP
    at once (0.05, one token) and a STOP (0.2475, two); at the length: b b b (0.324), a b b
    (0.12375), a a STOP (0.07425). Scores are log P / length ** length_penalty."""
    rows, scores = run(3, 3, length_penalty=0.0)
    assert rows == [[B, B, B], [A, STOP, STOP], [A, B, B]]  # padded with the stop token
    np.testing.assert_allclose(scores, np.log([0.324, 0.2475, 0.12375]), rtol=1e-5)
    # length_penalty -1 multiplies log P by the length: shorter hypotheses win.
    rows, scores = run(3, 3, length_penalty=-1.0)
    assert rows == [[A, STOP, STOP], [STOP, STOP, STOP], [B, B, B]]
    want = [math.log(0.2475) * 2, math.log(0.05), math.log(0.324) * 3]
    np.testing.assert_allclose(scores, want, rtol=1e-5)


def test_one_beam_is_greedy_on_a_real_model(tiny_lm):
    lm = tiny_lm
    prompt = lm.encoder.encode("Beams and greedy")
    greedy = next(lm.generate_tokens(prompt, length=15, temperature=0))[0]
    assert lm.beam_search(prompt, length=15, num_beams=1) == [greedy]
    four = lm.beam_search(prompt, length=15, num_beams=4, num_return_sequences=4)
    assert len(four) == 4 and len({tuple(r) for r in four}) == 4
    texts = lm.generate("Beams and greedy", length=15, num_beams=4, num_return_sequences=2)
    assert texts == [lm.encoder.decode(r) for r in four[:2]]


def test_a_search_in_pieces_finds_the_same_beams(tiny_lm):
    """With `progress` the compiled loop runs 16 steps at a time (a bar on a terminal): the
    same beams and the steps reported as they are done."""
    lm = tiny_lm
    prompt = lm.encoder.encode("Beams in pieces")
    for early_stopping in (False, True):
        whole = lm.beam_search(
            prompt, length=40, num_beams=4, num_return_sequences=4, early_stopping=early_stopping
        )
        seen = []
        pieces = lm.beam_search(
            prompt,
            length=40,
            num_beams=4,
            num_return_sequences=4,
            early_stopping=early_stopping,
            progress=lambda *a, s=seen: s.append(a),
        )
        assert pieces == whole
        assert seen and all(total == 40 for _, total in seen)
        done = [d for d, _ in seen]
        assert done == sorted(done) and done[0] == 16 and done[-1] <= 40, seen


class TwoTokenModel(MarkovModel):
    """Random log-probabilities over two tokens that depend on the position and the last token
    (so no two sequences tie): with 2^L beams, beam search keeps every sequence, so it must rank
    all of them as an exhaustive search does."""

    def __init__(self, table):
        self.table = table  # [positions, last token, next token]

    def __call__(self, tokens, cache, pos, logits_at=None):
        at = tf.shape(tokens)[1] - 1 if logits_at is None else logits_at
        last = tf.gather(tokens, at, axis=1)  # [batch]
        rows = tf.gather(tf.constant(self.table)[pos + at], last)  # [batch, 2]
        return {"logits": rows[:, None, :], "cache": cache}


@pytest.mark.parametrize("seed, length_penalty", [(0, 1.0), (1, 0.0), (2, 2.0)])
def test_beam_search_equals_exhaustive_search(seed, length_penalty):
    import itertools

    length, k = 4, 16  # 2^4 sequences, all kept
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(length + 1, 2, 2)).astype(np.float32) * 2
    log_p = table - np.log(np.exp(table).sum(-1, keepdims=True))
    model = TwoTokenModel(table)

    @tf.function(autograph=False)
    def fn():
        context = tf.zeros([k, 1], tf.int32)
        logits, cache = prefill(model, context, tf.constant(1), 1 + length)
        settings = Settings.make(stop_token=-1)
        return beam_search(
            model,
            logits,
            cache,
            context,
            tf.constant(1),
            tf.constant(length),
            settings,
            length,
            k,
            1,
            length_penalty,
            False,
        )

    out, scores = fn()
    found = {}
    for seq in itertools.product([0, 1], repeat=length):
        path = (0, *seq)  # the prompt token at position 0, then the sequence
        total = sum(log_p[i, a, b] for i, (a, b) in enumerate(zip(path, path[1:])))
        found[seq] = total / length**length_penalty
    ranked = sorted(found, key=found.get, reverse=True)
    assert [tuple(r) for r in out.numpy()[0].tolist()] == ranked
    np.testing.assert_allclose(scores.numpy()[0], [found[s] for s in ranked], rtol=1e-5)


def test_a_search_behind_the_engines_interface(tiny_lm):
    """`BeamSearch`: one search in its one slot, stepped in pieces; `step` gives the best
    hypothesis once, when the search ends; the results are `beam_search`'s; a removed search's
    slot is free again."""
    from gpt2_tf2.errors import UserError
    from gpt2_tf2.generation.beams import BeamSearch
    from gpt2_tf2.generation.config import GenerationConfig

    prompt = tiny_lm.encoder.encode("Beams and greedy")
    config = GenerationConfig(num_beams=4, num_return_sequences=3, length=15)
    search = BeamSearch(tiny_lm)
    slot = search.add(prompt, config)
    with pytest.raises(UserError, match="one search at a time"):
        search.add(prompt, config)
    with pytest.raises(UserError, match="positive number"):
        search.step(0)
    given = []
    while slot not in search.finished():
        given.append(search.step(4)[slot])
    assert given[:-1] == [[]] * (len(given) - 1) and search.steps(slot) <= 15
    assert search.step(4) == {slot: []}  # given once
    assert search.results(slot) == tiny_lm.beam_search(prompt, config)
    assert given[-1] == search.results(slot)[0]
    search.remove(slot)
    assert search.busy() == [] and search.step(1) == {}
    with pytest.raises(UserError, match="slot 0 is not busy"):
        search.results(slot)
    assert search.add(prompt, config) == slot
