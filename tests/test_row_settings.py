"""Each row its own settings (the slots of a decode engine): processors and strategies given
[batch] settings, per-row lengths and keys treat every row exactly as a batch of that row alone
with its settings as scalars, eagerly and under XLA, on every path (greedy, sampled over the
whole vocabulary, among the top candidates, and the full-sort fallback)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf2.generation.config import GenerationConfig
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import apply_processors
from gpt2_tf2.generation.settings import Settings
from gpt2_tf2.generation.strategies import choose_tokens

VOCAB, WIDTH = 300, 24
ROWS = [  # (settings, key, row in its key's batch, step, length so far)
    (dict(temperature=0), (1, 0), 0, 3, 10),
    (dict(top_k=5, temperature=0.7, repetition_penalty=1.4), (2, 7), 3, 0, 24),
    (dict(top_p=0.8, no_repeat_ngram_size=2), (3, 1), 1, 9, 17),
    (dict(temperature=1.3), (4, 0), 2, 5, 5),  # no truncation: a draw over every token
    (dict(top_k=40, top_p=0.95, no_repeat_ngram_size=3, repetition_penalty=0.8), (5, 2), 0, 1, 20),
    (dict(temperature=0, no_repeat_ngram_size=1), (6, 0), 5, 2, 12),
]


# 8 candidates: top-k 40 and wide nuclei take the full-sort fallback. The default tier runs both
# paths eagerly and the fallback under XLA; the top-candidate path under XLA is `large`.
@pytest.mark.parametrize(
    "candidates,xla",
    [(64, False), pytest.param(64, True, marks=pytest.mark.large), (8, False), (8, True)],
)
def test_rows_with_their_own_settings_equal_each_row_alone(xla, candidates):
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(len(ROWS), VOCAB)).astype(np.float32) * 3)
    tokens = tf.constant(rng.integers(0, 6, size=(len(ROWS), WIDTH)).astype(np.int32))  # repeats

    @tf.function(jit_compile=xla, autograph=False)  # one trace for every row
    def alone(logits, tokens, settings, length, step, rows):
        processed = apply_processors(logits, settings, History(tokens, length))
        return processed[0], choose_tokens(processed, settings, step, candidates, rows)[0]

    settings = Settings.rows(
        [Settings.make(GenerationConfig(**c), key=k) for c, k, _, _, _ in ROWS]
    )
    rows = tf.constant([r for _, _, r, _, _ in ROWS])
    steps = tf.constant([s for _, _, _, s, _ in ROWS])
    lengths = tf.constant([n for *_, n in ROWS])

    def together(logits, settings):  # an argument, as the engines pass it: not a constant
        processed = apply_processors(logits, settings, History(tokens, lengths))
        return processed, choose_tokens(processed, settings, steps, candidates, rows)

    processed, chosen = tf.function(together, jit_compile=xla, autograph=False)(logits, settings)
    for i, (config, key, row, step, length) in enumerate(ROWS):
        one = Settings.make(GenerationConfig(**config), key=key)  # scalars: the batch path
        want, token = alone(  # tensors, not ints: an int argument would retrace per row
            logits[i : i + 1],
            tokens[i : i + 1],
            one,
            tf.constant(length),
            tf.constant(step),
            tf.constant([row]),
        )
        np.testing.assert_array_equal(processed[i].numpy(), want.numpy())
        assert int(token) == int(chosen[i]), i
    banned = np.isneginf(processed.numpy()).sum(axis=1)
    assert banned[2] > 0 and banned[4] > 0 and banned[0] == 0  # the n-gram bans did apply


def test_a_rows_noise_depends_on_its_key_step_and_number_only():
    from gpt2_tf2.generation.random import gumbel_noise

    ids = tf.constant(np.arange(4 * 50).reshape(4, 50) % 37, tf.int32)
    batch = gumbel_noise(ids, tf.constant([7, 3], tf.int64), 5)  # one key: rows 0..3
    per_row = gumbel_noise(
        ids, tf.constant([[7, 3]] * 4, tf.int64), tf.constant([5] * 4), tf.range(4)
    )
    np.testing.assert_array_equal(batch.numpy(), per_row.numpy())
    moved = gumbel_noise(ids[2:3], tf.constant([[7, 3]], tf.int64), tf.constant([5]), [2])
    # Row 2, wherever it runs: the same random bits; the logarithms of a batch of another
    # size may round in another SIMD lane (1 ulp seen), far below any gap between logits.
    np.testing.assert_allclose(moved.numpy()[0], batch.numpy()[2], rtol=0, atol=1e-6)
    other = gumbel_noise(ids, tf.constant([[7, 3], [7, 4], [7, 3], [7, 3]], tf.int64), [5, 5, 6, 5])
    same = np.all(other.numpy() == batch.numpy(), axis=1)
    assert same.tolist() == [True, False, False, True]


@pytest.mark.parametrize("xla", [False, True])
def test_a_rows_full_sort_threshold_is_the_batchs(xla):
    """The full-sort fallback for some rows only (one at a time up to half of them, else all
    together): each asked row's top-k/top-p threshold is the one a sort of the whole batch gives,
    to the bit; the other rows get none (-inf). GPT-2's vocabulary, own settings per row."""
    from gpt2_tf2.generation.processors import full_threshold, full_thresholds_of

    logits = tf.constant(np.random.default_rng(2).normal(size=(6, 50257)), tf.float32)
    settings = Settings.rows(
        [
            Settings.make(top_k=k, top_p=p)
            for k, p in [(0, 0.9), (300, 1.0), (0, 0.5), (400, 0.95), (0, 0.99), (50, 0.7)]
        ]
    )
    run = tf.function(full_thresholds_of, jit_compile=xla, autograph=False)
    everyone = tf.function(full_threshold, jit_compile=xla, autograph=False)(logits, settings)
    for which in [[0] * 6, [0, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 1], [1, 1, 0, 1, 1, 0], [1] * 6]:
        which = np.array(which, bool)
        got = run(logits, settings, tf.constant(which)).numpy()[:, 0]
        want = np.where(which, everyone.numpy()[:, 0], -np.inf)
        np.testing.assert_array_equal(got, want, err_msg=str(which))
    assert len(set(everyone.numpy()[:, 0].tolist())) == 6  # each row's own threshold
