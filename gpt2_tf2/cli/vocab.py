"""`python -m gpt2_tf2.vocab train|stats`: build a vocabulary for your own language, and measure
how many tokens a vocabulary spends per word (`tokenizer/train.py`)."""

from __future__ import annotations

import os

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError


def train(
    *corpus,
    vocab_size=None,
    out=None,
    type="bpe",  # noqa: A002 (the flag's name)
    sp_model_type="unigram",
    heldout=0.05,
    models_dir="models",
    encoding="utf-8",
    errors="strict",
    verbose=False,
):
    """Train a new vocabulary on your text, for `gpt2_tf2.init` to build a model on.

    Prints tokens per word on held-out text, for this vocabulary and for GPT-2's (when a
    release is under models_dir): the fewer, the more text fits in the context.

    Args:
      corpus: text files, directories (read recursively) or globs; a spelled-out <|endoftext|>
        separates documents.
      vocab_size: tokens in the vocabulary, e.g. 8000 for a few MB of text, 50000 for GBs;
        at least 257 (the 256 byte symbols and <|endoftext|>).
      out: the directory to write (encoder.json + vocab.bpe, or sp.model); new, or without a
        vocabulary in it: nothing is replaced.
      type: bpe (GPT-2's byte-level BPE, trained by Hugging Face tokenizers) or sentencepiece
        (the sentencepiece package, as transformer-lm and other forks used).
      sp_model_type: with --type sentencepiece: unigram or bpe.
      heldout: the fraction of the corpus (every k-th piece) kept out of training and used to
        measure tokens per word; 0 measures on the training text.
      models_dir: where to look for a GPT-2 release to compare against.
      encoding: the text files' encoding.
      errors: strict (an undecodable byte is an error naming the file and offset), replace or
        ignore.
      verbose: show the trainer's progress even when stderr is not a terminal.
    """
    from gpt2_tf2.tokenizer import load_encoder, vocabulary_files
    from gpt2_tf2.tokenizer import train as training

    if not corpus:
        raise UserError("name the text to train on: vocab train CORPUS... --vocab_size N --out DIR")
    if vocab_size is None or out is None:
        raise UserError("vocab train needs --vocab_size N and --out DIR")
    _check_errors(errors)
    if type not in training.TYPES:  # the library's parameter is `kind`: the flag is named here
        raise UserError(f"--type must be one of {', '.join(training.TYPES)}, got {type!r}")
    heldout = _fraction(heldout)
    out = str(out)
    progress = True if verbose else None
    sample, held_out, seconds = training.train(
        corpus, out, vocab_size, type, sp_model_type, heldout, encoding, errors, progress
    )
    encoder = load_encoder(out)
    files = ", ".join(vocabulary_files(out))
    print(
        f"trained a {type} vocabulary of {encoder.n_vocab} tokens in {seconds:.1f} s: "
        f"{out}/ ({files})"
    )
    if encoder.n_vocab < vocab_size:
        print(
            f"(fewer than --vocab_size {vocab_size}: the corpus has no more pieces worth a token)"
        )
    report(encoder, sample, "held-out text" if held_out else "the training text", models_dir)
    print(f"next: python -m gpt2_tf2.init --vocab {out} --out models/NAME")
    return None


def stats(*files, model_name="124M", models_dir="models", encoding="utf-8", errors="strict"):
    """Tokens per word of a text with a model's vocabulary, next to GPT-2's.

    Args:
      files: text files, directories or globs to measure on.
      model_name: a model directory, or a name under models_dir, whose vocabulary to measure.
      models_dir: where model_name and the GPT-2 release compared against live.
      encoding: the text files' encoding.
      errors: strict, replace or ignore (undecodable bytes).
    """
    from gpt2_tf2.tokenizer import load_encoder
    from gpt2_tf2.tokenizer.train import read_corpus

    if not files:
        raise UserError("name the text to measure: vocab stats FILE... --model_name NAME")
    _check_errors(errors)
    texts = read_corpus(files, encoding, errors)
    model_name = str(model_name)  # a directory, or a name under models_dir (no TF needed)
    path = model_name if os.path.isdir(model_name) else os.path.join(str(models_dir), model_name)
    if not os.path.isdir(path):
        raise UserError(f"{model_name}: no model directory there, nor under {models_dir}/")
    encoder = load_encoder(path)
    report(encoder, texts, ", ".join(map(str, files)), models_dir, label=str(model_name))
    return None


def report(encoder, texts, where, models_dir, label="this vocabulary") -> None:
    """One line: tokens per word with `encoder`, and with GPT-2's if a release is at hand."""
    from gpt2_tf2.tokenizer.train import tokens_per_word

    size = sum(len(t.encode("utf-8")) for t in texts)
    ours = tokens_per_word(encoder, texts)
    gpt2 = gpt2_encoder(models_dir)
    line = f"tokens per word on {where} ({size / 1e3:.0f} kB): {ours:.2f} with {label}"
    if gpt2 is None:
        line += (
            f"; GPT-2's: no release under {models_dir}/ to compare with "
            f"(python -m gpt2_tf2.download 124M)"
        )
    else:
        line += f", {tokens_per_word(gpt2, texts):.2f} with GPT-2's"
    print(line)


def gpt2_encoder(models_dir):
    """GPT-2's encoder, from any release under models_dir; None if there is none."""
    from gpt2_tf2.core.hparams import PRESETS  # OpenAI's releases: all share GPT-2's vocabulary
    from gpt2_tf2.tokenizer import load_encoder

    for name in PRESETS:
        path = os.path.join(str(models_dir), name)
        if os.path.isfile(os.path.join(path, "encoder.json")):
            try:
                return load_encoder(path)
            except UserError:
                continue
    return None


def _check_errors(errors):
    if errors not in ("strict", "replace", "ignore"):
        raise UserError(f"--errors must be strict, replace or ignore, got {errors!r}")


def _fraction(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--heldout must be a fraction in [0, 1), got {value!r}")
    return float(value)


train.positional = ("corpus",)  # what the command takes by position (cli/flags.py)
train.uses_tensorflow = False  # the runner need not import (and quiet) TensorFlow
stats.positional = ("files",)
stats.uses_tensorflow = False
SUBCOMMANDS = {"train": train, "stats": stats}


def main(argv=None):
    runner.run_subcommand(SUBCOMMANDS, argv, "gpt2_tf2.vocab")
