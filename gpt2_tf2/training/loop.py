"""The training loop: steps until a step limit or a stop request, with callbacks around it.

As minGPT's `Trainer.run`: the loop knows the step, the batches and when to stop; everything else
(checkpoints, samples, validation, logs, progress, signals) is a callback. A callback is any
object with some of `on_start(loop)`, `on_step(loop, step, metrics)`, `on_end(loop)` (after the
last step, also after a stop request) and `close(loop)` (always, also after an error).
"""

from __future__ import annotations

import math
import time

from gpt2_tf2.errors import UserError


def check_finite(loss: float, out: dict, step: int) -> None:
    """Stop the run, before any callback can save, at a non-finite loss whose update was applied
    (an fp16 overflow that the loss scale skipped is no harm: `applied` is False then). The
    weights are then NaN or infinite: saving them would rotate the good checkpoints away."""
    if math.isfinite(loss) or not bool(out.get("applied", True)):
        return
    raise UserError(
        f"step {step}: the loss is {loss}: the weights are no longer finite, so the run stopped "
        f"without saving (its checkpoints are as they were); lower `learning_rate`, or check "
        f"the data"
    )


class Callback:
    """The events of a training loop; each does nothing unless overridden."""

    def on_start(self, loop: Loop) -> None:
        pass

    def on_step(self, loop: Loop, step: int, metrics: dict) -> None:
        pass

    def on_end(self, loop: Loop) -> None:
        pass

    def close(self, loop: Loop) -> None:
        pass


class Loop:
    """Runs `trainer.train_step` on `batches` from the trainer's current step.

    Args:
      trainer: a `Trainer` (its `step` variable is the global step).
      batches: `data.Batches`, or anything with `iterate(start_step)`.
      callbacks: called in order at each event.
      steps: stop when the global step reaches this; None: until a stop request.
    """

    def __init__(self, trainer, batches, callbacks=(), steps: int | None = None):
        self.trainer, self.batches, self.callbacks, self.steps = (
            trainer,
            batches,
            list(callbacks),
            steps,
        )
        self.stop_reason = None

    @property
    def step(self) -> int:
        return int(self.trainer.step.numpy())  # .numpy(): a MirroredVariable has no __int__

    def request_stop(self, reason) -> None:
        """Stop after the current step (e.g. a signal handler's request). Replicas of a
        `tf.distribute` run stop together: the request rides on the next step to all of them."""
        self.stop_reason = reason
        if hasattr(self.trainer, "stop_requested"):
            self.trainer.stop_requested = True

    def run(self) -> int:
        """Train; returns the global step reached."""
        import tensorflow as tf  # here: the command line imports Callback before TensorFlow

        try:
            self._emit("on_start")
            batches = self.batches.iterate(self.step)
            while self.steps is None or self.step < self.steps:
                windows = tf.constant(next(batches))
                began = time.perf_counter()
                out = self.trainer.train_step(windows)
                metrics = {"loss": float(out["loss"]), "lr": float(out["lr"])}
                metrics["seconds"] = time.perf_counter() - began
                check_finite(metrics["loss"], out, self.step)
                agreed = "stop" in out and float(out["stop"]) > 0
                if agreed and self.stop_reason is None:
                    self.stop_reason = "another worker was asked to stop"
                self._emit("on_step", self.step, metrics)
                if agreed or (self.stop_reason is not None and "stop" not in out):
                    break
            self._emit("on_end")
        finally:
            self._emit("close")
        return self.step

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event, lambda *a: None)(self, *args)
