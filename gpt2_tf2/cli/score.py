"""`python -m gpt2_tf2.score FILE...`: how well a model predicts a text, or each of several.

Prints the token count, the mean negative log-likelihood in nats per token and the perplexity
(exp of the mean), per file. Texts longer than the context are scored in windows of n_ctx
advancing by n_ctx // 2, every token predicted from at least n_ctx // 2 earlier ones once the
text is long enough.
"""

from __future__ import annotations

import json as json_lib

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError


def score(
    *files,
    model_name="124M",
    models_dir="models",
    json=False,
    run_name=None,
    checkpoint_dir="checkpoint",
    offline=False,
    dtype="float32",
    backend=None,
    verbose=False,
):
    """Score text files with GPT-2, each on its own.

    Args:
      files: UTF-8 text files to score; '-' reads standard input.
      model_name: release name under models_dir (124M, 355M, 774M, 1558M) or a model directory.
      models_dir: directory holding the release directories.
      json: print one JSON object per file instead of text lines.
      run_name: score with a fine-tuning run's newest checkpoint instead of model_name.
      checkpoint_dir: where run directories live.
      offline: never download; a release missing from models_dir is an error.
      dtype: float32 (the released weights as they are), float16 or bfloat16: weights and
        activations in 16 bits, half the memory (docs/sampling.md, "Speed, compilation and
        memory"); meant for GPUs, slower than float32 on CPUs. Layer norms, softmax and logits
        stay float32. int8: weights in 8 bits on the tflite backend, a quarter of the memory and
        on a CPU about twice float32's speed, logits within about 0.1 of float32's
        (docs/sampling.md, "TensorFlow Lite"). int4: weights in 4 bits (a scale per 32) on the
        tflite backend, an eighth of the memory; on the demo model's held-out text 0.03-0.04
        nats a token worse than float32 (int8: 0.002).
      backend: xla (TensorFlow's compiled loops) or tflite (TensorFlow Lite with XNNPACK; the
        model is converted once, 10-15 s at 124M, and cached). Default: tflite for --dtype int8
        and int4, else xla (float32 as earlier releases, bit for bit).
      verbose: show TensorFlow's log messages.
    """
    from gpt2_tf2.generation.checks import check_dtype  # plain Python, before TensorFlow

    if not files:
        raise UserError("name the text to score: score FILE... ('-' reads standard input)")
    if [str(f) for f in files].count("-") > 1:
        raise UserError("standard input ('-') can be read once only")
    check_dtype(dtype, backend)
    texts = {str(f): runner.read_prompt_file(str(f)) for f in files}  # every file, before the model
    runner.configure_logging(verbose)
    from gpt2_tf2.generation.language_model import perplexity

    lm = runner.load_model(
        model_name, models_dir, offline, run_name, checkpoint_dir, verbose, dtype, backend
    )
    encoded = {name: lm.encode(text) for name, text in texts.items()}
    for name, tokens in encoded.items():
        if not tokens:
            raise UserError(f"{name}: no text to score")
    for name, tokens in encoded.items():
        total, count = lm.score_tokens(tokens, progress=True)
        mean = total / count
        result = {"file": name, "tokens": len(tokens), "nll": mean, "perplexity": perplexity(mean)}
        if json:
            print(json_lib.dumps(result), flush=True)
            continue
        if len(encoded) > 1:
            print(f"file: {name}")
        print(
            f"tokens: {result['tokens']}\nnll: {mean:.6f} nats/token\n"
            f"perplexity: {result['perplexity']:.4f}",
            flush=True,
        )
    return None


score.configures_logging = True  # after checking its flags, before TensorFlow loads
score.positional = ("files",)  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(score, argv, name="gpt2_tf2.score")
