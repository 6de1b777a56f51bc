"""Training: the config (`config.py`), the step (`step.py`: loss, gradients, optimizer update),
the optimizers, the data (`data.py`: files -> chunks -> windows -> batches), run directories
(`runs.py`), the loop with its callbacks (`loop.py`, `callbacks.py`) and a run put together from
a config (`session.py`)."""


def __getattr__(name):
    # The names of the former `gpt2_tf2.training` module, imported on first use (TensorFlow).
    if name in (
        "COMPUTE_DTYPES",
        "INITIAL_LOSS_SCALE",
        "Trainer",
        "learning_rate",
        "lm_loss",
        "add_noise",
    ):
        from gpt2_tf2.training import step

        return getattr(step, name)
    if name == "TrainConfig":
        from gpt2_tf2.training.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'gpt2_tf2.training' has no attribute {name!r}")
