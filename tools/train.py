#!/usr/bin/env python3
"""Drop-in replacement for nshepperd's `train.py`: `python train.py --dataset data.npz`."""

import _path  # noqa: F401

from gpt2_tf2 import cli
from gpt2_tf2.cli.train import train

if __name__ == "__main__":
    cli.run(train, name="train.py")
