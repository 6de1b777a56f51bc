"""gpt2_tf2: OpenAI's GPT-2 in native TensorFlow 2.

`gpt2_tf2.load(...)` is imported lazily so that the command-line faces can silence TensorFlow's
start-up logging before TensorFlow is first imported. `load` itself imports TensorFlow (quietly)
only when the model needs it: the xla backend always, the tflite backend to convert, sample,
score or search beams, but not to decode greedily from a cached conversion with LiteRT's
interpreter installed (`core.lazy`).
"""

__version__ = "0.1.0"
__all__ = ["GenerationConfig", "load", "__version__"]


def __getattr__(name):
    if name == "GenerationConfig":  # plain Python: no TensorFlow needed to build one
        from gpt2_tf2.generation.config import GenerationConfig

        return GenerationConfig
    if name == "load":
        from gpt2_tf2 import quiet
        from gpt2_tf2.core import lazy

        lazy.import_with(quiet.import_tensorflow)  # its start-up log hidden, when first needed
        quiet.hide_native_output()  # TFLite's notice of its XNNPACK delegate, as on the CLI
        from gpt2_tf2.generation.language_model import load

        return load
    raise AttributeError(f"module 'gpt2_tf2' has no attribute {name!r}")
