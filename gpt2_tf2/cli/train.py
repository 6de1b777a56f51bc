"""`python -m gpt2_tf2.train --dataset D --run_name R`: fine-tune GPT-2, resumably.

nshepperd's `train.py` flags and defaults, plus a schedule, clipping, a step limit and exact resume:
the checkpoint holds the model, the optimizer's slots and iteration count and the global step, and
the data windows are a function of (seed, step), so a resumed run continues the same trajectory.
A checkpoint is saved every --save_every steps, on SIGINT/SIGTERM, and at the end. The flags,
their defaults and their help are `training.config.TrainConfig`'s fields.
"""

from __future__ import annotations

import signal
import sys

from gpt2_tf2.cli import flags, runner
from gpt2_tf2.training.config import TrainConfig
from gpt2_tf2.training.loop import Callback


class StopOnSignal(Callback):
    """SIGINT and SIGTERM ask the loop to stop after the current step (a checkpoint is saved
    at the end); the previous handlers come back when the loop ends."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def on_start(self, loop):
        def request_stop(signum, frame):
            self.signum = signum
            loop.request_stop(signal.Signals(signum).name)

        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, request_stop)

    def close(self, loop):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def train(*args, **kwargs):
    bound = train.__signature__.bind(*args, **kwargs)  # fire passes flags by position
    bound.apply_defaults()
    values = dict(bound.arguments)
    verbose = values.pop("verbose")
    cfg = TrainConfig(**values)
    cfg.validate()

    def devices():  # before TensorFlow's first operation
        from gpt2_tf2.training import distribute

        return distribute.make_strategy(cfg.strategy, cfg.num_cpu_devices)

    strategy = runner.configure_logging(verbose, xla=True, setup=devices)
    from gpt2_tf2.training import session  # imports TensorFlow, after configure_logging

    runner.setup_devices(verbose)
    run = session.start(cfg, strategy)
    stop = StopOnSignal()
    loop = session.loop(run, extra=[stop])
    step = session.run_loop(loop, run)
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        print(f"{name}: stopped at step {step}, checkpoint saved", file=sys.stderr)
        sys.exit(128 + stop.signum)
    if loop.stop_reason is not None:
        print(f"stopped at step {step} ({loop.stop_reason}), checkpoint saved", file=sys.stderr)
    return None


VERBOSE = ("verbose", False, "show TensorFlow's log messages.")
train.__signature__, train.__doc__ = flags.command_signature(
    "Fine-tune GPT-2 on a dataset; resumes the run's newest checkpoint by default.",
    [*flags.config_fields(TrainConfig), VERBOSE],
)
train.uses_xla = True  # runner.run hides XLA's first-compilation log lines too
train.configures_logging = True  # devices and strategy come before TensorFlow's first operation
train.positional = ()


def main(argv=None):
    runner.run(train, argv, name="gpt2_tf2.train")
