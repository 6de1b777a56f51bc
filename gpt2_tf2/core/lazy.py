"""TensorFlow imported where a path first needs it, not when this package is imported.

The tflite backend's greedy decoding runs on NumPy and LiteRT's interpreter alone
(`generation.tflite`), and `import tensorflow` takes 2.4-3.8 s on 2 cores: longer than
CTranslate2's whole first call (docs/benchmarks/cpu.md). Modules on that path import TensorFlow
through `tensorflow()` inside the functions that need it. How it is imported is the face's
choice: `gpt2_tf2.load` registers `quiet.import_tensorflow` (its start-up log hidden), so this
layer itself touches no process-wide state. The face likewise says how to hide what native
code prints where the package knows it will (TFLite's notice of its XNNPACK delegate, printed
when an interpreter is made: `native_output_hidden`).
"""

from __future__ import annotations

import contextlib

_importer = [None]  # how the face wants TensorFlow imported (the last registered), if any
_hider = [None]  # a context manager that hides native code's output, as the face wants it


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


def version_tuple(text: str) -> tuple:
    """(major, minor) of a version string: '2.21.0' -> (2, 21)."""
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def import_with(importer) -> None:
    """Have `tensorflow()` import TensorFlow by calling `importer()` (in place of any earlier
    one), which must also do its part when TensorFlow is imported already: `gpt2_tf2.load`
    registers the library's quiet import, a command its own."""
    _importer[0] = importer


def hide_native_output_with(context) -> None:
    """Have `native_output_hidden()` be `context()` (`quiet`: the command line's filter of
    stderr, which shows any line that is not known noise afterwards)."""
    _hider[0] = context


def native_output_hidden():
    """A context in which what native code writes to stderr is hidden, if the face asked."""
    return _hider[0]() if _hider[0] is not None else contextlib.nullcontext()


def tensorflow():
    """The tensorflow module, imported now if it is not yet. The registered importer runs once
    per registration even when the user imported TensorFlow first (`import tensorflow as tf`
    heads most notebooks): it also sets what must precede TensorFlow's first compilation, not
    its import (the on-disk XLA cache's flag: without it, a warm first call at 124M compiled its
    decode loop again, 13.4 s instead of 9.6 on a 2-core CPU without AVX-512)."""
    importer, _importer[0] = _importer[0], None
    if importer is not None:
        importer()
    import tensorflow as tf

    return tf
