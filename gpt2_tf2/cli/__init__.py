"""The command line: `gpt2_tf2 COMMAND ...` and `python -m gpt2_tf2.COMMAND`.

One module per command (a plain function with an `Args:` docstring that python-fire runs) and
the shared runner (`runner.py`: flags, logging, devices, errors, exit codes).
"""

from __future__ import annotations

import importlib
import sys

from gpt2_tf2.cli.runner import configure_logging, load_model, run, setup_devices  # noqa: F401

COMMANDS = {
    "sample": "generate text from a model",
    "score": "mean log-likelihood and perplexity of a text",
    "download": "download OpenAI's released models",
    "encode": "encode text into an .npz dataset for train",
    "train": "fine-tune on a dataset, resumably",
    "export": "write a fine-tuned run as an OpenAI model directory",
    "vocab": "train a vocabulary on your text (train), or measure one (stats)",
    "init": "a new model with GPT-2's initialisation, on a vocabulary",
    "attention": "an HTML page of what each token attends to, per layer and head",
    "convert": "Hugging Face models in (from-hf) and out (to-hf)",
    "serve": "an OpenAI-compatible HTTP server with a playground page",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        lines = [f"  {cmd:10s} {desc}" for cmd, desc in COMMANDS.items()]
        print(
            "usage: gpt2_tf2 COMMAND [FLAGS]   (gpt2_tf2 COMMAND --help for its flags)\n\n"
            "commands:\n" + "\n".join(lines)
        )
        if argv and argv[0] not in ("-h", "--help", "help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    importlib.import_module(f"gpt2_tf2.cli.{argv[0]}").main(argv[1:])
