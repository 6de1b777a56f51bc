"""Prompts of different lengths in one batch: left-padded and masked, each row computes what
its prompt alone does (logits, greedy and sampled tokens, the processors' history), from the
API (`generate([...])`, `generate_tokens([[...], ...])`, `score([...])`) and the CLI
(`sample --prompts_file`, `score FILE FILE`)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_in_process, write_random_model
from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.history import History
from gpt2_tf2.generation.processors import no_repeat_ngram, repetition_penalty
from gpt2_tf2.generation.settings import Settings


@pytest.fixture()
def lm(tiny_lm):
    return tiny_lm  # shared: read only


PROMPTS = ["Hi", "A much longer prompt than the first one, by far", "Once upon a time"]


def left_padded(rows, pad=0):
    size = max(len(r) for r in rows)
    return [[pad] * (size - len(r)) + r for r in rows], [size - len(r) for r in rows]


@pytest.mark.parametrize("cached", [False, True])
def test_each_row_has_the_logits_of_its_prompt_alone(lm, cached):
    rows = [lm.encoder.encode(p) for p in PROMPTS]
    padded, offsets = left_padded(rows, pad=17)  # any pad token: it is never attended to
    size = len(padded[0])
    kwargs = dict(offsets=tf.constant(offsets, tf.int32))
    if cached:
        kwargs["cache"] = lm.model.init_cache(len(rows), 64)
    batch = lm.model(tf.constant(padded), **kwargs)["logits"].numpy()
    for row, offset, logits in zip(rows, offsets, batch):
        alone = lm.model(tf.constant([row]))["logits"].numpy()[0]
        assert np.max(np.abs(logits[offset:] - alone)) < 1e-4
    assert size > min(len(r) for r in rows)


def test_the_blocked_attention_path_masks_the_padding_too(vocab_files, tmp_path):
    """Sequences of 256 tokens and more attend in query blocks (core.model.CAUSAL_BLOCKS)."""
    import gpt2_tf2

    path = tmp_path / "ctx300"
    write_random_model(path, vocab_files, n_ctx=300)
    model = gpt2_tf2.load(str(path)).model
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 1000, n).tolist() for n in (290, 40)]
    padded, offsets = left_padded(rows)
    batch = model(tf.constant(padded), offsets=tf.constant(offsets))["logits"].numpy()
    for row, offset, logits in zip(rows, offsets, batch):
        alone = model(tf.constant([row]))["logits"].numpy()[0]
        assert np.max(np.abs(logits[offset:] - alone)) < 1e-4


SETTINGS = [  # greedy and sampled (with a penalty) in the default tier; the others `large`
    dict(temperature=0),
    pytest.param(dict(temperature=0, repetition_penalty=1.5), marks=pytest.mark.large),
    pytest.param(dict(temperature=0, no_repeat_ngram_size=2), marks=pytest.mark.large),
    pytest.param(dict(top_k=40, seed=5), marks=pytest.mark.large),
    dict(top_p=0.9, temperature=0.8, seed=6, repetition_penalty=1.3),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_each_row_of_a_mixed_batch_equals_its_prompt_alone(lm, settings):
    """Greedy: as the prompt alone at batch 1. Sampling: draws are keyed by (seed, batch, row),
    so row i equals row i of a batch of that prompt alone with the same seed."""
    rows = [lm.encoder.encode(p) for p in PROMPTS]
    (batch,) = lm.generate_tokens(rows, length=20, batch_size=3, **settings)
    for i, row in enumerate(rows):
        if "seed" in settings:
            alone = next(lm.generate_tokens(row, length=20, nsamples=3, batch_size=3, **settings))[
                i
            ]
        else:
            alone = next(lm.generate_tokens(row, length=20, **settings))[0]
        assert batch[i] == alone, (i, settings)


def test_stop_at_endoftext_and_unconditional_rows_mix_in(lm):
    rows = [lm.encoder.encode("The end"), [], lm.encoder.encode("x" * 30)]
    settings = dict(length=30, temperature=0.9, seed=11, stop_at_endoftext=True)
    (batch,) = lm.generate_tokens(rows, batch_size=3, **settings)
    for i, row in enumerate(rows):
        assert batch[i] == next(lm.generate_tokens(row, nsamples=3, batch_size=3, **settings))[i]


@pytest.mark.large  # the window itself: test_window, in the default tier
def test_a_mixed_batch_goes_on_past_the_context(lm):
    rows = [lm.encoder.encode(p) for p in PROMPTS]
    (batch,) = lm.generate_tokens(rows, length=150, batch_size=3, temperature=0)
    assert [len(r) for r in batch] == [150] * 3
    # The first window is the longest prompt's room: there every row is as alone.
    room = 64 - max(len(r) for r in rows)
    for i, row in enumerate(rows):
        alone = next(lm.generate_tokens(row, length=room, temperature=0))[0]
        assert batch[i][:room] == alone


def test_prompts_run_batch_size_rows_at_a_time_in_order(lm):
    rows = [lm.encoder.encode(p) for p in PROMPTS]
    settings = dict(length=8, temperature=0, nsamples=2)
    batches = list(lm.generate_tokens(rows, batch_size=4, **settings))
    assert [len(b) for b in batches] == [4, 2]  # 3 prompts x 2 samples; the last batch short
    flat = [r for b in batches for r in b]
    for i, row in enumerate(rows):
        alone = next(lm.generate_tokens(row, length=8, temperature=0))[0]
        assert flat[2 * i] == flat[2 * i + 1] == alone


def test_generate_takes_a_list_of_strings(lm):
    out = lm.generate(PROMPTS, length=10, temperature=0, include_prefix=True)
    assert len(out) == 3
    for prompt, text in zip(PROMPTS, out):
        assert text == lm.generate(prompt, length=10, temperature=0, include_prefix=True)[0]
    two = lm.generate(PROMPTS[:2], length=5, temperature=0, nsamples=2, batch_size=1)
    assert two[0] == two[1] == out[0][len(PROMPTS[0]) :][: len(two[0])]
    assert len(two) == 4


def test_beam_search_takes_a_list_of_prompts(lm):
    out = lm.generate(PROMPTS[:2], length=8, num_beams=3, num_return_sequences=2)
    assert len(out) == 4
    for i, prompt in enumerate(PROMPTS[:2]):
        assert out[2 * i : 2 * i + 2] == lm.generate(
            prompt, length=8, num_beams=3, num_return_sequences=2
        )


def test_score_takes_a_list(lm):
    texts = ["Hello world.", "Something else entirely, longer."]
    assert lm.score(texts) == [lm.score(t) for t in texts]
    with pytest.raises(UserError, match="string or a list"):
        lm.score(3)


def test_bad_lists_are_clear_errors(lm):
    with pytest.raises(UserError, match="non-empty list of strings"):
        lm.generate([], length=3)
    with pytest.raises(UserError, match="one prompt, not a list"):
        next(lm.generate_tokens([[1, 2], [3]], nsamples=0, length=3))
    with pytest.raises(UserError, match="exceeds|fills"):
        lm.generate(["a", "word " * 70], length=3)


# ---- the processors read each row's own tokens only -----------------------------------------


def test_the_repetition_penalty_ignores_left_padding():
    """Row 0 is padded with token 2 in columns 0..1: token 2 is not in its history."""
    tokens = tf.constant([[2, 2, 1, 3], [2, 1, 0, 3]])
    logits = tf.constant([[1.0, 2.0, 4.0, -1.0], [1.0, 2.0, 4.0, -1.0]])
    settings = Settings.make(repetition_penalty=2.0)
    out = repetition_penalty(logits, settings, History(tokens, 4, tf.constant([2, 0]))).numpy()
    np.testing.assert_allclose(out[0], [1.0, 1.0, 4.0, -2.0])  # 1 and 3 seen; 2 was padding
    np.testing.assert_allclose(out[1], [0.5, 1.0, 2.0, -2.0])  # all four seen


def test_no_repeat_ngram_ignores_ngrams_through_the_padding():
    """Row 0: padding [5, 7] then 5 | current prefix 5: the bigram (5, 7) lies in the padding,
    so 7 stays allowed; row 1 has (5, 7) of its own, so 7 is banned after 5."""
    tokens = tf.constant([[5, 7, 5], [5, 7, 5]])
    logits = tf.zeros([2, 8])
    settings = Settings.make(no_repeat_ngram_size=2)
    out = no_repeat_ngram(logits, settings, History(tokens, 3, tf.constant([2, 0]))).numpy()
    assert np.isfinite(out[0]).all()
    assert np.isneginf(out[1, 7]) and np.isfinite(np.delete(out[1], 7)).all()


# ---- the command line ----------------------------------------------------------------------


def test_sample_prompts_file_shows_each_prompt_and_its_samples(tiny_model_dir, tmp_path, lm):
    path = tmp_path / "prompts.txt"
    path.write_text("Hi\n\nOnce upon a time\n", encoding="utf-8")
    args = ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--length", "6"]
    args += ["--temperature", "0"]
    for extra, stdin in (
        (["--prompts_file", str(path)], None),
        (
            ["--prompts_file", "-", "--batch_size", "2"],
            path.read_text(encoding="utf-8"),
        ),
    ):
        r = run_in_process(args + extra, input=stdin)
        assert r.returncode == 0, r.stderr
        expected = ""
        for i, prompt in enumerate(["Hi", "Once upon a time"]):
            text = lm.generate(prompt, length=6, temperature=0)[0]
            expected += f"Model prompt >>> {prompt}\n{'=' * 40} SAMPLE {i + 1} {'=' * 40}\n"
            expected += f"{text}\n{'=' * 80}\n"
        assert r.stdout == expected


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "x"], "drop --prompt"),
        (["--nsamples", "0"], "nsamples=0"),
    ],
)
def test_prompts_file_conflicts_are_one_line(tiny_model_dir, tmp_path, extra, message):
    path = tmp_path / "p.txt"
    path.write_text("a\n", encoding="utf-8")
    r = run_in_process(
        ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--prompts_file", str(path)]
        + extra
    )
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_an_empty_prompts_file_is_one_line(tiny_model_dir, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\n  \n", encoding="utf-8")
    r = run_in_process(
        ["-m", "gpt2_tf2.sample", "--model_name", tiny_model_dir, "--prompts_file", path]
    )
    assert r.returncode != 0 and "no prompts" in r.stderr and "Traceback" not in r.stderr


def test_score_takes_several_files(tiny_model_dir, tmp_path, lm):
    import json

    texts = {"a.txt": "Hello world.", "b.txt": "Something else entirely."}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    files = [str(tmp_path / n) for n in texts]
    r = run_in_process(["-m", "gpt2_tf2.score", *files, "--model_name", tiny_model_dir, "--json"])
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["file"] for x in results] == files
    for x, text in zip(results, texts.values()):
        assert abs(x["nll"] - lm.score(text)) < 1e-5
    r = run_in_process(
        ["-m", "gpt2_tf2.score", "-", "-", "--model_name", tiny_model_dir], input="x"
    )
    assert r.returncode != 0 and "once" in r.stderr
