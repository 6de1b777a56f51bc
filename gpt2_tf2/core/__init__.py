"""The model itself: GPT-2 as `tf.Variable`s (`model.py`), its hyperparameters (`hparams.py`) and
the few device- and compiler-specific kernels (`kernels.py`). Knows nothing of files, command
lines or decoding.

Subpackage `__init__`s import nothing: the command line must hide TensorFlow's start-up logging
before anything imports TensorFlow, and `hparams` alone must not pull it in.
"""
