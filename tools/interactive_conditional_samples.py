#!/usr/bin/env python3
"""Drop-in replacement for openai/gpt-2's `src/interactive_conditional_samples.py` (same flags)."""

import _path  # noqa: F401

from gpt2_tf2 import cli
from gpt2_tf2.cli.sample import sample


def interact_model(
    model_name="124M",
    seed=None,
    nsamples=1,
    batch_size=1,
    length=None,
    temperature=1,
    top_k=0,
    top_p=1,
    models_dir="models",
):
    """Ask for prompts ('Model prompt >>> ') and print samples continuing each, as the original did.

    Args:
      model_name: release name under models_dir (124M, 355M, 774M, 1558M) or a model directory.
      seed: integer seed for reproducible samples.
      nsamples: samples per prompt.
      batch_size: samples computed at once.
      length: tokens per sample; default half the model's context (512).
      temperature: 1 = the model's distribution, lower = more conservative, 0 = greedy.
      top_k: sample among the k most likely tokens; 0 = no limit.
      top_p: nucleus sampling threshold in (0, 1]; 1 = no limit.
      models_dir: directory holding the model directories.
    """
    return sample(
        model_name=model_name,
        models_dir=models_dir,
        seed=seed,
        nsamples=nsamples,
        batch_size=batch_size,
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        interactive=True,
    )


if __name__ == "__main__":
    cli.run(interact_model)
