"""gpt-2-simple's conveniences, with its names: prefix, truncate, include_prefix, sample_delim,
destination_path, return_as_list (generate() and the sample command)."""

from __future__ import annotations

import pytest

from conftest import run_in_process
from gpt2_tf2.errors import UserError
from gpt2_tf2.generation import texts


def test_finish_by_hand():
    assert texts.finish("Q: ", "answer<|endoftext|>more", "<|endoftext|>", False) == "answer"
    assert texts.finish("Q: ", "answer<|endoftext|>more", "<|endoftext|>", True) == "Q: answer"
    assert texts.finish("Q: ", "no end here", "<|endoftext|>", False) == "no end here"
    # Only the continuation is searched: a truncate string inside the prompt does not count.
    assert texts.finish("a. b", " c. d", ".", True) == "a. b c"
    assert texts.finish(None, "x", None, True) == "x"
    assert texts.joined(["one", "two"], "--\n") == "one\n--\ntwo\n--\n"


def test_generate_with_gpt_2_simple_names(tiny_lm, tmp_path, capsys):
    lm = tiny_lm
    settings = dict(length=12, nsamples=3, batch_size=3, top_k=5, seed=4)
    plain = lm.generate("Hello", **settings)
    assert lm.generate(prefix="Hello", **settings) == plain
    assert lm.generate(prefix="Hello", include_prefix=True, **settings) == [
        "Hello" + t for t in plain
    ]
    cut = plain[0][3:6]  # a piece of the first sample's text
    first = lm.generate("Hello", truncate=cut, **settings)[0]
    assert first == plain[0][: plain[0].find(cut)]
    out = tmp_path / "samples.txt"
    assert lm.generate("Hello", destination_path=str(out), return_as_list=False, **settings) is None
    assert out.read_text(encoding="utf-8") == "".join(f"{t}\n{'=' * 20}\n" for t in plain)
    assert capsys.readouterr().out == ""
    lm.generate("Hello", return_as_list=False, sample_delim="~~\n", **settings)
    assert capsys.readouterr().out == "".join(f"{t}\n~~\n" for t in plain)
    with pytest.raises(UserError, match="exists"):
        lm.generate("Hello", destination_path=str(out), **settings)
    with pytest.raises(UserError, match="not both"):
        lm.generate("Hello", prefix="Hi", **settings)


def test_sample_writes_a_new_file_only(tiny_model_dir, tmp_path):
    out = tmp_path / "out.txt"
    args = [
        "-m",
        "gpt2_tf2.sample",
        "--model_name",
        tiny_model_dir,
        "--length",
        "6",
        "--nsamples",
        "2",
        "--seed",
        "1",
        "--prompt",
        "Hi",
    ]
    done = run_in_process([*args, "--destination_path", str(out), "--include_prefix"])
    assert done.returncode == 0, done.stderr
    written = out.read_text(encoding="utf-8").split("=" * 20 + "\n")
    assert len(written) == 3 and written[-1] == "" and all(w.startswith("Hi") for w in written[:2])
    printed = run_in_process([*args, "--include_prefix"]).stdout
    assert written[0].rstrip("\n") in printed
    again = run_in_process([*args, "--destination_path", str(out)])
    assert again.returncode == 2 and "exists" in again.stderr
    assert out.read_text(encoding="utf-8").count("Hi") == 2
