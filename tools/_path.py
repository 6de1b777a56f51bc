"""Lets `python tools/SCRIPT.py` run from a clone without installing the package."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
