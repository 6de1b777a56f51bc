"""`GenerationConfig`: one set of decoding settings for the library, the `sample` command's
flags and help, and the decode loop's tensors; its one check, in the library's words and, on the
command line, in the flags' words."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_main
from gpt2_tf2.cli import sample as sample_cli
from gpt2_tf2.cli.flags import help_text
from gpt2_tf2.errors import UserError
from gpt2_tf2.generation.config import NAMES, TENSORS, GenerationConfig
from gpt2_tf2.generation.settings import Settings


def test_every_setting_is_a_sample_flag_with_its_help_and_default():
    text = help_text(sample_cli.sample, "gpt2_tf2.sample")
    params = sample_cli.sample.__signature__.parameters
    for f in dataclasses.fields(GenerationConfig):
        assert f.name in params, f.name
        first_words = " ".join(f.metadata["help"].split()[:5])
        assert re.search(rf"--{f.name}\b[^\n]*\n\s+{re.escape(first_words)}", text), f.name
        if f.name != "batch_size":  # the command line's own default: one row at a time
            assert params[f.name].default == f.default, f.name
    assert params["batch_size"].default == 1
    own = {f.name for f in dataclasses.fields(sample_cli.SampleFlags)}
    assert set(params) == own | set(NAMES) and not own & set(NAMES)


def test_unknown_or_misplaced_settings_are_one_error():
    with pytest.raises(UserError, match=r"unknown generation setting 'topk'; the settings are: "):
        GenerationConfig.of(topk=40)
    with pytest.raises(UserError, match="settings are given by name"):
        GenerationConfig.of(20)
    base = GenerationConfig(top_k=40, seed=1)
    assert GenerationConfig.of(base, temperature=0.5) == dataclasses.replace(base, temperature=0.5)
    assert GenerationConfig.of() == GenerationConfig()


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-1), "`temperature` must be >= 0"),
        (dict(top_k=True), r"`top_k` must be an integer from 0 \(off\)"),
        (dict(top_p=0), r"`top_p` must be in \(0, 1\]"),
        (dict(repetition_penalty=0), "`repetition_penalty` must be > 0"),
        (
            dict(no_repeat_ngram_size=-1),
            r"`no_repeat_ngram_size` must be an integer from 0 \(off\) to",
        ),
        (dict(seed=-1), "`seed` must be an integer from 0 to 2"),
        (dict(nsamples=-1), r"`nsamples` must be an integer >= 0 \(0 = until interrupted\)"),
        (dict(batch_size=0), "`batch_size` must be a positive integer"),
        (dict(length=0), "`length` must be a positive integer"),
        (dict(window_stride=0), "`window_stride` must be a positive integer"),
        (dict(num_beams=0), "`num_beams` must be a positive integer"),
        (dict(num_return_sequences=2), "`num_return_sequences` counts the beams returned"),
        (dict(num_beams=2, num_return_sequences=3), "from 1 to `num_beams`"),
        (dict(num_beams=2, top_k=4), "beam search does not sample: drop `top_k` and `top_p`"),
        (
            dict(num_beams=2, nsamples=2),
            "beam search is deterministic: `nsamples` and `batch_size` stay 1",
        ),
        (dict(early_stopping="yes"), "`early_stopping` must be true or false"),
        (dict(stop_at_endoftext=1), "`stop_at_endoftext` must be true or false"),
    ],
)
def test_validate_names_the_first_bad_value(settings, message):
    with pytest.raises(UserError, match=message):
        GenerationConfig(**settings).validate()


def test_validate_with_the_model_resolves_length_and_stride():
    c = GenerationConfig().validate(n_ctx=64, prompt_len=5)
    assert (c.length, c.window_stride) == (32, 32)
    assert GenerationConfig().validate(64, 0).length == 64  # unconditional: the whole context
    assert GenerationConfig(length=500).validate(64, 5).length == 500  # slides past the context
    with pytest.raises(UserError, match=r"the prompt \(64 tokens\) fills the model's context"):
        GenerationConfig().validate(64, 64)
    with pytest.raises(UserError, match=r"exceeds the model's context of 64 tokens"):
        GenerationConfig(num_beams=2, length=60).validate(64, 5)  # beams do not slide
    with pytest.raises(UserError, match=r"`window_stride` must be an integer in 1..63"):
        GenerationConfig(window_stride=64).validate(64, 5)


def test_the_loop_tensors_come_from_the_config():
    config = GenerationConfig(temperature=0, top_k=7, top_p=0.5, repetition_penalty=1.3)
    s = Settings.make(config, key=(9, 2), stop_token=50256, no_repeat_ngram_size=3)
    assert set(TENSORS) | {"seed", "stop_token"} == set(Settings._fields)
    for name, dtype in TENSORS.items():
        assert getattr(s, name).dtype == np.dtype(dtype), name
    assert float(s.temperature) == 0 and int(s.top_k) == 7 and int(s.no_repeat_ngram_size) == 3
    assert s.seed.tolist() == [9, 2] and int(s.stop_token) == 50256
    assert (s.seed.dtype, s.stop_token.dtype) == (np.int64, np.int32)
    # Inside a compiled function each is the tensor of that dtype.
    seen = tf.function(lambda s: s)(s)
    assert seen.temperature.dtype == tf.float32 and seen.seed.dtype == tf.int64


@pytest.mark.parametrize(
    "args, want",
    [
        (["--seed", "1.5"], "error: --seed must be an integer from 0 to 2**63 - 1, got 1.5"),
        (["--top_p", "2"], "error: --top_p must be in (0, 1] (1 = off), got 2"),
        (
            ["--num_beams", "2", "--top_k", "3"],
            "error: beam search does not sample: drop --top_k and --top_p",
        ),
    ],
)
def test_the_command_words_them_as_flags_before_tensorflow(args, want):
    code, out, err = run_main(sample_cli.main, ["--model_name", "/nonexistent", *args])
    assert code == 2 and err.startswith(want) and err.count("\n") == 1 and not out, err


def test_the_library_takes_a_config_or_keywords(tiny_lm):
    config = GenerationConfig(length=6, top_k=5, seed=3, nsamples=2, batch_size=2)
    by_config = next(tiny_lm.generate_tokens([464], config))
    by_name = next(
        tiny_lm.generate_tokens([464], length=6, top_k=5, seed=3, nsamples=2, batch_size=2)
    )
    overridden = next(tiny_lm.generate_tokens([464], config, seed=4))
    assert by_config == by_name != overridden
    assert tiny_lm.generate("Hi", config, nsamples=1, batch_size=None) == tiny_lm.generate(
        "Hi", length=6, top_k=5, seed=3
    )
    with pytest.raises(UserError, match="beam search cannot stream"):
        next(tiny_lm.stream_tokens([464], num_beams=2))


def test_the_library_speaks_of_backends_not_flags():
    from gpt2_tf2.generation.checks import check_dtype

    with pytest.raises(UserError) as e:
        check_dtype("int8", "xla")
    assert "--" not in str(e.value) and "tflite" in str(e.value)
