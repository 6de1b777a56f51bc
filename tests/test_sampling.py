"""Sampling filters on hand-computed distributions (batch > 1); the decode loop on a stub model."""

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.generation.loop import decode
from gpt2_tf2.generation.processors import (
    CANDIDATES,
    filter_logits,
    full_threshold,
    full_thresholds_of,
    top_k_filter,
    top_p_filter,
)
from gpt2_tf2.generation.settings import Settings
from gpt2_tf2.generation.strategies import choose_tokens

NEG = -np.inf
# The filters' fast path looks at the top CANDIDATES logits; 1 and 2 force the whole-row fallback
# on these 4-token rows (top-k > candidates, or a nucleus reaching past them).
PATHS = pytest.mark.parametrize("c", [CANDIDATES, 1, 2])


def settings_of(temperature, top_k, top_p, seed=(0, 0), stop_token=-1):
    return Settings.make()._replace(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=tf.constant(seed, tf.int64),
        stop_token=stop_token,
    )


def logits_of(*rows):
    return tf.constant(np.log(np.array(rows, np.float64)), tf.float32)


def kept(filtered):
    return (np.asarray(filtered) > -np.inf).astype(int).tolist()


@PATHS
def test_top_k_per_row(c):
    logits = tf.constant([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [0.0, 5.0, 1.0, 5.0]])
    assert kept(top_k_filter(logits, 2, c)) == [[0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]]
    assert kept(top_k_filter(logits, 1, c)) == [
        [0, 0, 0, 1],
        [1, 0, 0, 0],
        [0, 1, 0, 1],
    ]  # ties stay
    assert kept(top_k_filter(logits, 0, c)) == [[1] * 4] * 3  # 0 = off
    assert np.array_equal(top_k_filter(logits, 2, c).numpy()[0, 2:], [3.0, 4.0])  # values unchanged


@PATHS
def test_top_p_per_row_keeps_crossing_token(c):
    # Row 0: mass before each token 0, .5, .8, .95 -> p=.6 keeps .5 and .3 (.3 crosses .6).
    # Row 1 is row 0 reversed: the original's shared threshold got this row wrong.
    logits = logits_of([0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5], [0.25, 0.25, 0.25, 0.25])
    assert kept(top_p_filter(logits, 0.6, c)) == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    # Row 2 is all ties: the threshold logit equals every logit, so all stay (as with top-k ties).
    assert kept(top_p_filter(logits, 0.45, c)) == [[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert kept(top_p_filter(logits, 0.9, c)) == [[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]]
    assert kept(top_p_filter(logits, 1.0, c)) == [[1] * 4] * 3
    assert kept(top_p_filter(logits, 1e-6, c)) == [[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]


@PATHS
def test_top_k_then_top_p_combine(c):
    # top_k=3 renormalises [.4,.3,.2] to [.444,.333,.222]: mass before .444 < .75 but .777 is not,
    # so 2 tokens stay; top_p alone would keep 3 (mass before: 0, .4, .7).
    logits = logits_of([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4])
    assert kept(filter_logits(logits, 1.0, 3, 0.75, c)) == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert kept(filter_logits(logits, 1.0, 0, 0.75, c)) == [[1, 1, 1, 0], [0, 1, 1, 1]]


def whole_rows(seed):
    """Rows of GPT-2's vocabulary size as the whole-row fallback meets them: flat (a random
    model's), peaked, rounded to ties, and with banned (-inf) tokens."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(6, 50257)) * np.array([[0.5], [1], [3], [10], [1], [3]])
    rows[4] = np.round(rows[4] * 4) / 4  # many ties
    rows[5, rng.random(50257) < 0.4] = NEG  # banned tokens
    return rows.astype(np.float32)


@pytest.mark.parametrize("xla", [False, True])
def test_the_whole_row_thresholds_are_top_k_and_the_nucleus(xla):
    """The fallback's thresholds (a search, not a sort) against float64 by hand: top-k's is the
    k-th largest logit exactly (ties stay); top-p's is the smallest logit whose tokens strictly
    more likely hold less than p of the mass after top-k, up to float32's sums (1e-5)."""

    def threshold(logits, k, p):
        s = settings_of(1.0, k, p)
        return full_threshold(logits, s)

    run = tf.function(threshold, jit_compile=True) if xla else threshold
    for seed in range(2):
        rows = whole_rows(seed)
        for k, p in [
            (1, 1.0),
            (40, 1.0),
            (300, 1.0),
            (50257, 1.0),
            (0, 0.9),
            (0, 0.5),
            (0, 1e-6),
            (0, 0.99),
            (1000, 0.9),
            (3, 0.5),
        ]:
            got = run(tf.constant(rows), tf.constant(k), tf.constant(p, tf.float32)).numpy()
            for row, t in zip(rows.astype(np.float64), got[:, 0]):
                assert t in row  # a logit of the row
                ranked = np.sort(row)[::-1]
                kth = ranked[k - 1] if k else -np.inf
                if p == 1.0:
                    assert t == kth, (k, p)
                    continue
                probs = np.where(row >= kth, np.exp(row - row.max()), 0)
                probs /= probs.sum()
                above = probs[row > t].sum()  # the mass strictly more likely than the threshold
                assert t >= kth and above < p + 1e-5, (k, p, above)
                smaller = row[(row < t) & (row >= kth)]
                if len(smaller):  # the next logit down would not be kept: t is the smallest
                    assert probs[row > smaller.max()].sum() >= p - 1e-5, (k, p)


def test_rows_searched_alone_or_together_get_the_same_thresholds():
    """The engine's rows with their own settings: searched one at a time (few rows need it) or
    all at once (most do), each row's threshold is the same to the bit, and -inf where not asked."""
    rows = tf.constant(whole_rows(2))
    settings = settings_of(
        tf.ones([6]), tf.constant([0, 40, 0, 300, 2, 0]), tf.constant([0.9, 1, 0.5, 0.8, 1, 0.99])
    )
    every = full_thresholds_of(rows, settings, tf.constant([True] * 6)).numpy()
    few = tf.constant([False, True, False, False, False, True])
    for which in (few, ~few):  # 2 of 6 one at a time; 4 of 6 together
        got = full_thresholds_of(rows, settings, which).numpy()
        assert np.array_equal(got[which.numpy()], every[which.numpy()])
        assert np.all(got[~which.numpy()] == NEG)


def test_temperature_scales_logits():
    logits = tf.constant([[1.0, 2.0], [3.0, -1.0]])
    assert np.allclose(filter_logits(logits, 0.5, 0, 1.0), [[2.0, 4.0], [6.0, -2.0]])


def test_greedy_at_temperature_zero():
    logits = tf.constant([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]])
    assert choose_tokens(logits, settings_of(0.0, 0, 1.0, [1, 2])).numpy().tolist() == [1, 0]


def test_sampled_frequencies_follow_filtered_distribution():
    """4000 rows at once: frequencies match the renormalised nucleus, masked tokens never appear."""
    rows = [[0.5, 0.3, 0.15, 0.05]] * 2000 + [[0.05, 0.15, 0.3, 0.5]] * 2000
    tokens = choose_tokens(logits_of(*rows), settings_of(1.0, 0, 0.6, [3, 4])).numpy()
    first, second = np.bincount(tokens[:2000], minlength=4), np.bincount(tokens[2000:], minlength=4)
    assert first[2] == first[3] == 0 and second[0] == second[1] == 0
    assert abs(first[0] / 2000 - 0.625) < 0.04 and abs(second[3] / 2000 - 0.625) < 0.04


class StubModel:
    """Next token = (sum of the tokens at visible positions) % V, read from its cache: tests the
    loop's positions, cache threading, prompt padding and stopping without any transformer.
    Like attention, the logits at position p see cache slots <= p only; XLA-compatible."""

    V = 11

    def init_cache(self, batch, max_len):
        return [tf.zeros([batch, max_len], tf.int32)]

    def __call__(self, tokens, cache, pos, logits_at=None):
        (seen,) = cache
        n = tf.shape(tokens)[1]
        slots = tf.range(tf.shape(seen)[1])
        new = tf.gather(tokens, tf.clip_by_value(slots - pos, 0, n - 1), axis=1)  # [batch, T]
        seen = tf.where((slots >= pos) & (slots < pos + n), new, seen)
        last = pos + (n - 1 if logits_at is None else logits_at)
        nxt = tf.reduce_sum(tf.where(slots <= last, seen, 0), axis=1) % self.V
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


def run_stub(
    prompts, length, stop=-1, temperature=0.0, pad=0, slots=None, xla=False, processors=()
):
    """Decode after `prompts` padded with `pad` garbage columns, into `slots` columns."""
    slots = slots or length
    padded = [p + [7] * pad for p in prompts]

    @tf.function(jit_compile=xla, autograph=False)
    def fn(context, prompt_len, length):
        settings = settings_of(temperature, 0, 1.0, [0, 0], stop)
        return decode(
            StubModel(), context, prompt_len, length, settings, slots, processors=processors
        )

    out = fn(tf.constant(padded, tf.int32), tf.constant(len(prompts[0])), tf.constant(length))
    return out.numpy()[:, :length].tolist(), out.numpy()[:, length:]


@pytest.mark.parametrize("xla", [False, True])
@pytest.mark.parametrize("length", [1, 2, 9])
def test_decode_loop_with_stub(length, xla):
    prompts = [[1, 2, 3], [4, 0, 7]]
    assert run_stub(prompts, length, xla=xla)[0] == [expected(p, length) for p in prompts]


@pytest.mark.parametrize("xla", [False, True])
def test_decode_loop_ignores_prompt_padding_and_spare_slots(xla):
    """Prompt padded to a bucket, result wider than length: same tokens, spare slots = stop."""
    prompts = [[1, 2, 3], [4, 0, 7]]
    got, spare = run_stub(prompts, 5, stop=-1, pad=5, slots=16, xla=xla)
    assert got == [expected(p, 5) for p in prompts]
    assert (spare == -1).all()


def test_decode_loop_stops_and_pads():
    prompts = [[0, 6], [0, 3], [0, 7]]  # rows emit token 6 at steps 0, 1 and 2
    got = run_stub(prompts, 8, stop=6)[0]
    assert got == [expected(p, 8, stop=6) for p in prompts]
    assert all(6 in row for row in got)


def test_decode_seed_determinism():
    class Uniform(StubModel):
        def __call__(self, tokens, cache, pos, logits_at=None):
            return {"logits": tf.zeros([tf.shape(tokens)[0], 1, 50]), "cache": cache}

    def run(seed):
        context = tf.constant([[1]] * 4, tf.int32)
        return decode(Uniform(), context, 1, 20, settings_of(1.0, 0, 1.0, [seed, 0]), 20).numpy()

    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))
    assert len({tuple(r) for r in run(5)}) == 4  # rows of a batch differ


def test_xla_draws_equal_eager_draws():
    """The compiled path draws the same tokens as the eager reference for the same key."""
    logits = tf.constant(np.random.default_rng(0).normal(size=(6, 300)), tf.float32)
    compiled_choice = tf.function(choose_tokens, jit_compile=True)  # one trace: tensors below
    for settings in [(1.0, 0, 1.0), (0.8, 40, 0.9), (1.3, 0, 0.5), (1.0, 290, 0.999)]:
        s = settings_of(*settings, [11, 12])
        eager = choose_tokens(logits, s).numpy()
        compiled = compiled_choice(logits, tf.nest.map_structure(tf.constant, s)).numpy()
        assert eager.tolist() == compiled.tolist(), settings


def test_unfiltered_draw_frequencies():
    """Gumbel-max draws follow softmax(logits / temperature) over the whole row."""
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    tokens = choose_tokens(logits_of(*[probs] * 8000), settings_of(1.0, 0, 1.0, [5, 6]))
    freq = np.bincount(tokens.numpy(), minlength=4) / 8000
    assert np.max(np.abs(freq - probs)) < 0.025


def test_candidate_draw_equals_full_row_draw():
    """Noise drawn for the top candidates only picks the same tokens as noise over the whole row
    (the fallback, forced with candidates=1), for the same key."""
    logits = tf.constant(np.random.default_rng(1).normal(size=(16, 500)) * 3, tf.float32)
    for settings in [(1.0, 10, 1.0), (0.7, 0, 0.5), (1.0, 50, 0.9)]:
        for step in range(5):
            s = settings_of(*settings, [7, 1])
            fast = choose_tokens(logits, s, step).numpy()
            full = choose_tokens(logits, s, step, candidates=1).numpy()
            assert fast.tolist() == full.tolist(), settings


def ban_seen(logits, settings, history):
    """A processor that reads the loop's history: every token already in the prompt or the
    output is banned (a crude no-repeat rule, enough to tell whether the history is right)."""
    vocab = logits.shape[-1]
    visible = tf.range(tf.shape(history.tokens)[1])[None, :] < history.length  # [1, T]
    seen = tf.one_hot(tf.where(visible, history.tokens, vocab), vocab + 1)[:, :, :vocab]
    return tf.where(tf.reduce_any(seen > 0, axis=1), float("-inf"), logits)


def expected_banned(prompt, length):
    """By hand: the stub's rule, next = sum % V, unless seen; then the smallest unseen id
    (greedy over logits that are 10 at the rule's token and 0 elsewhere)."""
    seq, out = list(prompt), []
    for _ in range(length):
        want = sum(seq) % StubModel.V
        token = want if want not in seq else min(set(range(StubModel.V)) - set(seq))
        out.append(token)
        seq.append(token)
    return out


@pytest.mark.parametrize("xla", [False, True])
def test_processors_read_the_token_history(xla):
    """The loop hands processors the prompt and every token so far, and nothing else (prompt
    padding and spare slots are not history)."""
    prompts = [[1, 2, 3], [4, 0, 7]]
    got, _ = run_stub(prompts, 6, pad=5, slots=16, xla=xla, processors=(ban_seen,))
    assert got == [expected_banned(p, 6) for p in prompts]
