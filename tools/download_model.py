#!/usr/bin/env python3
"""Drop-in replacement for openai/gpt-2's `download_model.py`: `python download_model.py 124M`."""

import _path  # noqa: F401

from gpt2_tf2 import cli
from gpt2_tf2.cli.download import download

if __name__ == "__main__":
    cli.run(download, name="download_model.py")
