#!/usr/bin/env python3
"""Drop-in replacement for nshepperd's `encode.py`: `python encode.py IN OUT.npz`."""

import _path  # noqa: F401

from gpt2_tf2 import cli
from gpt2_tf2.cli.encode import encode

if __name__ == "__main__":
    cli.run(encode, name="encode.py")
