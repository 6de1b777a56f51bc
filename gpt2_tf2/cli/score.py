"""`python -m gpt2_tf2.score FILE`: how well a model predicts a text.

Prints the token count, the mean negative log-likelihood in nats per token and the perplexity
(exp of the mean). Texts longer than the context are scored in windows of n_ctx advancing by
n_ctx // 2, every token predicted from at least n_ctx // 2 earlier ones once the text is long
enough.
"""

from __future__ import annotations

import json as json_lib

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError


def score(
    file,
    model_name="124M",
    models_dir="models",
    json=False,
    run_name=None,
    checkpoint_dir="checkpoint",
    offline=False,
    dtype="float32",
    verbose=False,
):
    """Score a text file with GPT-2.

    Args:
      file: UTF-8 text file to score; '-' reads standard input.
      model_name: release name under models_dir (124M, 355M, 774M, 1558M) or a model directory.
      models_dir: directory holding the release directories.
      json: print one JSON object instead of text lines.
      run_name: score with a fine-tuning run's newest checkpoint instead of model_name.
      checkpoint_dir: where run directories live.
      offline: never download; a release missing from models_dir is an error.
      dtype: float32 (the released weights as they are), float16 or bfloat16: weights and
        activations in 16 bits, half the memory (README, "Speed, compilation and memory"); meant
        for GPUs, slower than float32 on CPUs. Layer norms, softmax and logits stay float32.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    text = runner.read_prompt_file(str(file))
    from gpt2_tf2.generation.language_model import perplexity

    lm = runner.load_model(
        model_name, models_dir, offline, run_name, checkpoint_dir, verbose, dtype
    )
    tokens = lm.encoder.encode(text)
    if not tokens:
        raise UserError(f"{file}: no text to score")
    total, count = lm.score_tokens(tokens, progress=True)
    mean = total / count
    result = {
        "file": str(file),
        "tokens": len(tokens),
        "nll": mean,
        "perplexity": perplexity(mean),
    }
    if json:
        print(json_lib.dumps(result))
    else:
        print(
            f"tokens: {result['tokens']}\nnll: {mean:.6f} nats/token\n"
            f"perplexity: {result['perplexity']:.4f}"
        )
    return None


score.positional = ("file",)  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(score, argv, name="gpt2_tf2.score")
