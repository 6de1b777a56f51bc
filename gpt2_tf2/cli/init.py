"""`python -m gpt2_tf2.init --vocab DIR --out models/NAME ...`: a new, untrained model on a
vocabulary, in OpenAI's layout, ready for `encode` and `train` (`core/init.py`)."""

from __future__ import annotations

import os

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError


def init(
    out=None,
    vocab=None,
    n_layer=12,
    n_embd=768,
    n_head=12,
    n_ctx=1024,
    seed=0,
    verbose=False,
):
    """Write a new model with GPT-2's initialisation: weights normal(0, 0.02), the residual
    projections scaled by 1/sqrt(2 * n_layer) as in the GPT-2 paper. Defaults are 124M's shape.

    Train it with: python -m gpt2_tf2.train --model_name OUT --dataset TEXT_OR_NPZ

    Args:
      out: the model directory to write: new or empty (init never writes over anything).
      vocab: a directory with a vocabulary: encoder.json + vocab.bpe (from `vocab train`, or a
        GPT-2 release's), or sp.model; it is copied beside the weights and sets n_vocab.
      n_layer: transformer blocks.
      n_embd: width of the residual stream; a multiple of n_head.
      n_head: attention heads per block.
      n_ctx: the longest context in tokens (the position embedding's length).
      seed: the random seed of the initial weights.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    if out is None or vocab is None:
        raise UserError("init needs --vocab DIR (a vocabulary) and --out DIR (the new model)")
    from gpt2_tf2.core.hparams import HParams
    from gpt2_tf2.tokenizer import load_encoder, vocabulary_files

    sizes = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_ctx": n_ctx}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    encoder = load_encoder(str(vocab))
    hparams = HParams(
        n_vocab=encoder.n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer
    )
    write(hparams, vocabulary_files(str(vocab)), str(out), seed)
    print(
        f"wrote {out}: {hparams.num_params() / 1e6:.1f}M parameters "
        f"({n_layer} layers, {n_embd} wide, {n_head} heads, context {n_ctx}, "
        f"{encoder.n_vocab} tokens)"
    )
    return None


def write(hparams, vocab_files, out, seed):
    from gpt2_tf2.core.init import initialize
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.formats.openai import check_target, write_model_dir

    # A new model goes into a new or empty directory only: even a model this program wrote
    # there (an export of a trained run) would be lost under untrained weights.
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"{out}: not empty; init writes a new model into a new or empty directory")
    check_target(out, "init")
    model = GPT2(hparams, seed=None)
    initialize(model, seed)
    write_model_dir(model, hparams, vocab_files, out, "init")


init.positional = ()  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(init, argv, name="gpt2_tf2.init")
