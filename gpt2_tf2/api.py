"""The Python API under its original module name: `gpt2_tf2.api.load`, `LanguageModel`, ...

The code lives in `generation.language_model` (and `formats.model_dir` for finding models).
"""

from gpt2_tf2 import quiet

quiet.import_tensorflow()  # its start-up log hidden, as on the command line (gpt2_tf2.quiet)
quiet.hide_native_output()  # and TFLite's notice of its XNNPACK delegate

from gpt2_tf2.formats.model_dir import cast_model, find_model_dir, resolve_model_dir  # noqa: E402
from gpt2_tf2.generation.config import GenerationConfig  # noqa: E402
from gpt2_tf2.generation.language_model import (  # noqa: E402
    DTYPES,
    LanguageModel,
    check_dtype,
    load,
    peek,
    perplexity,
)
from gpt2_tf2.generation.loop import bucket  # noqa: E402

__all__ = [
    "DTYPES",
    "LanguageModel",
    "bucket",
    "cast_model",
    "check_dtype",
    "GenerationConfig",
    "find_model_dir",
    "load",
    "peek",
    "perplexity",
    "resolve_model_dir",
]
