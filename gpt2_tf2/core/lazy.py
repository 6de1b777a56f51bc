"""TensorFlow imported where a path first needs it, not when this package is imported.

The tflite backend's greedy decoding runs on NumPy and LiteRT's interpreter alone
(`generation.tflite`), and `import tensorflow` takes 2.4-3.8 s on 2 cores: longer than
CTranslate2's whole first call (docs/benchmarks/cpu.md). Modules on that path import TensorFlow
through `tensorflow()` inside the functions that need it. How it is imported is the face's
choice: `gpt2_tf2.load` registers `quiet.import_tensorflow` (its start-up log hidden), so this
layer itself touches no process-wide state.
"""

from __future__ import annotations

import sys

_importers = []  # how the face wants TensorFlow imported (the last registered), if any


def installed() -> tuple[str, str] | None:
    """(distribution, version) of the installed TensorFlow, read without importing it."""
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly"):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def version() -> str:
    """TensorFlow's version: its distribution's, else (a build of another name) the imported
    module's."""
    found = installed()
    return found[1] if found else tensorflow().__version__


def import_with(importer) -> None:
    """Have `tensorflow()` import TensorFlow by calling `importer()` first (once)."""
    if importer not in _importers:
        _importers.append(importer)


def tensorflow():
    """The tensorflow module, imported now if it is not yet (by the registered importer)."""
    if "tensorflow" not in sys.modules and _importers:
        _importers[-1]()
    import tensorflow as tf

    return tf
