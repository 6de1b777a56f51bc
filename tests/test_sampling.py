"""Sampling filters on hand-computed distributions (batch > 1); the decode loop on a stub model."""

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.sampling import choose_tokens, decode, filter_logits, top_k_filter, top_p_filter

NEG = -np.inf


def logits_of(*rows):
    return tf.constant(np.log(np.array(rows, np.float64)), tf.float32)


def kept(filtered):
    return (np.asarray(filtered) > -np.inf).astype(int).tolist()


def test_top_k_per_row():
    logits = tf.constant([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [0.0, 5.0, 1.0, 5.0]])
    assert kept(top_k_filter(logits, 2)) == [[0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]]
    assert kept(top_k_filter(logits, 1)) == [[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 1]]  # ties stay
    assert kept(top_k_filter(logits, 0)) == [[1] * 4] * 3  # 0 = off
    assert np.array_equal(top_k_filter(logits, 2).numpy()[0, 2:], [3.0, 4.0])  # values unchanged


def test_top_p_per_row_keeps_crossing_token():
    # Row 0: mass before each token 0, .5, .8, .95 -> p=.6 keeps .5 and .3 (.3 crosses .6).
    # Row 1 is row 0 reversed: the original's shared threshold got this row wrong.
    logits = logits_of([0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5], [0.25, 0.25, 0.25, 0.25])
    assert kept(top_p_filter(logits, 0.6)) == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    # Row 2 is all ties: the threshold logit equals every logit, so all stay (as with top-k ties).
    assert kept(top_p_filter(logits, 0.45)) == [[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert kept(top_p_filter(logits, 0.9)) == [[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]]
    assert kept(top_p_filter(logits, 1.0)) == [[1] * 4] * 3
    assert kept(top_p_filter(logits, 1e-6)) == [[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]


def test_top_k_then_top_p_combine():
    # top_k=3 renormalises [.4,.3,.2] to [.444,.333,.222]: mass before .444 < .75 but .777 is not,
    # so 2 tokens stay; top_p alone would keep 3 (mass before: 0, .4, .7).
    logits = logits_of([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4])
    assert kept(filter_logits(logits, 1.0, 3, 0.75)) == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert kept(filter_logits(logits, 1.0, 0, 0.75)) == [[1, 1, 1, 0], [0, 1, 1, 1]]


def test_temperature_scales_logits():
    logits = tf.constant([[1.0, 2.0], [3.0, -1.0]])
    assert np.allclose(filter_logits(logits, 0.5, 0, 1.0), [[2.0, 4.0], [6.0, -2.0]])


def test_greedy_at_temperature_zero():
    logits = tf.constant([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]])
    seed = tf.constant([1, 2], tf.int64)
    assert choose_tokens(logits, 0.0, 0, 1.0, seed).numpy().tolist() == [1, 0]


def test_sampled_frequencies_follow_filtered_distribution():
    """4000 rows at once: frequencies match the renormalised nucleus, masked tokens never appear."""
    rows = [[0.5, 0.3, 0.15, 0.05]] * 2000 + [[0.05, 0.15, 0.3, 0.5]] * 2000
    tokens = choose_tokens(logits_of(*rows), 1.0, 0, 0.6, tf.constant([3, 4], tf.int64)).numpy()
    first, second = np.bincount(tokens[:2000], minlength=4), np.bincount(tokens[2000:], minlength=4)
    assert first[2] == first[3] == 0 and second[0] == second[1] == 0
    assert abs(first[0] / 2000 - 0.625) < 0.04 and abs(second[3] / 2000 - 0.625) < 0.04


class StubModel:
    """Next token = (sum of all tokens seen so far) % V, read from its cache: tests the loop's
    positions, cache threading and stopping without any transformer."""

    V = 11

    def init_cache(self, batch, max_len):
        return [tf.zeros([batch, max_len], tf.int32)]

    def __call__(self, tokens, cache, pos, last_only=False):
        (seen,) = cache
        t = tf.shape(seen)[1]
        n = tf.shape(tokens)[1]
        slots = tf.range(t)
        padded = tf.pad(tokens, [[0, 0], [pos, t - pos - n]])
        seen = tf.where((slots >= pos) & (slots < pos + n), padded, seen)
        nxt = tf.reduce_sum(seen, axis=1) % self.V
        logits = tf.one_hot(nxt, self.V, on_value=10.0, off_value=0.0)[:, None, :]
        return {"logits": logits, "cache": [seen]}


def expected(prompt, length, stop=-1):
    seq, out = list(prompt), []
    for _ in range(length):
        if out and out[-1] == stop:
            out.append(stop)
            continue
        out.append(sum(seq) % StubModel.V)
        seq.append(out[-1])
    return out


def run_stub(prompts, length, stop=-1, temperature=0.0):
    fn = tf.function(
        lambda c, n: decode(
            StubModel(), c, n, temperature, 0, 1.0, tf.constant([0, 0], tf.int64), stop
        )
    )
    return fn(tf.constant(prompts, tf.int32), tf.constant(length)).numpy().tolist()


@pytest.mark.parametrize("length", [1, 2, 9])
def test_decode_loop_with_stub(length):
    prompts = [[1, 2, 3], [4, 0, 7]]
    assert run_stub(prompts, length) == [expected(p, length) for p in prompts]


def test_decode_loop_stops_and_pads():
    prompts = [[0, 6], [0, 3], [0, 7]]  # rows emit token 6 at steps 0, 1 and 2
    got = run_stub(prompts, 8, stop=6)
    assert got == [expected(p, 8, stop=6) for p in prompts]
    assert all(6 in row for row in got)


def test_decode_seed_determinism():
    class Uniform(StubModel):
        def __call__(self, tokens, cache, pos, last_only=False):
            return {"logits": tf.zeros([tf.shape(tokens)[0], 1, 50]), "cache": cache}

    def run(seed):
        return decode(
            Uniform(),
            tf.constant([[1]] * 4, tf.int32),
            20,
            1.0,
            0,
            1.0,
            tf.constant([seed, 0], tf.int64),
            -1,
        ).numpy()

    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))
    assert len({tuple(r) for r in run(5)}) == 4  # rows of a batch differ
