"""TensorFlow imported quietly: what its C++ side writes to stderr while it loads (absl's
I0000 lines about oneDNN, CUDA drivers, CPU features) is hidden, any other line shown after.
The command line imports TensorFlow this way unless --verbose; the Python API (`gpt2_tf2.load`,
`gpt2_tf2.api`) does too, unless GPT2_TF2_VERBOSE=1 or TF_CPP_MIN_LOG_LEVEL is set (the user's
own choice of TensorFlow's log level is kept). The API also keeps compiled programs in the
command line's on-disk XLA cache (`cli.runner.configure_xla_cache`; GPT2_TF2_XLA_CACHE=''
turns it off). Either way TensorFlow is imported without the Keras it loads eagerly and this
package never uses (`cli.runner.import_tensorflow_without_keras`: ~0.8 s of a start).
A top-level module: the redirection it borrows from the command line's runner, and the cache's
flag, are process-wide state, which only that layer and this one touch."""

from __future__ import annotations

import os
import sys


def import_tensorflow() -> None:
    """Point XLA at the on-disk cache of compiled programs, and import TensorFlow with its
    start-up log hidden (see the module docstring): no import when it is imported already or
    when its logging was asked for."""
    from gpt2_tf2.cli.runner import (
        configure_xla_cache,
        hidden_stderr,
        import_tensorflow_without_keras,
    )

    configure_xla_cache()  # also after TensorFlow's import: the flag is read at the first compile
    if "tensorflow" in sys.modules or os.environ.get("GPT2_TF2_VERBOSE") == "1":
        return
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    # 3, as on the command line: cuInit's E line comes at the first operation, after the import.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

    with hidden_stderr():
        tf = import_tensorflow_without_keras()
    tf.get_logger().setLevel("ERROR")


def hide_native_output() -> None:
    """Unless GPT2_TF2_VERBOSE=1, have the package hide what native code prints where it knows
    it will (`core.lazy.native_output_hidden`: TFLite's "INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU." as it makes an interpreter), through the command line's filter of stderr,
    as the command line hides it."""
    from gpt2_tf2.cli.runner import hidden_stderr
    from gpt2_tf2.core import lazy

    if os.environ.get("GPT2_TF2_VERBOSE") != "1":
        lazy.hide_native_output_with(hidden_stderr)
