"""Training on several devices and machines with `tf.distribute` (`train --strategy ...`).

- `one_device`: no strategy; today's single compiled step (the default, unchanged).
- `mirrored`: `tf.distribute.MirroredStrategy` over every local GPU, or over the logical CPU
  devices `--num_cpu_devices N` makes when there is no GPU.
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, one process per machine, the
  cluster given by the `TF_CONFIG` environment variable (TensorFlow's multi-worker guide).

Every replica reads its slice of the same global batch (the data windows are a function of the
run's seed and the step, so each worker computes the whole batch and keeps its rows); the step
(`step.Trainer`) scales each replica's loss by the global batch and sums gradients across
replicas, so k replicas of b windows equal one device with k * b. The chief (worker 0) writes
the checkpoints, logs and samples; other workers save to temporary directories that are removed
(as TensorFlow's guide for custom loops does), and a stop request (SIGTERM on any worker) is
summed into the next step, so every worker stops after the same step and saves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile

import tensorflow as tf

from gpt2_tf2.errors import UserError
from gpt2_tf2.training.step import Trainer, sum_over_replicas


def split_cpu(n: int) -> None:
    """Make `n` logical CPU devices (so strategies can run without GPUs). Must come before
    TensorFlow initialises its devices, i.e. before the first operation of the process."""
    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == n:
        return  # done already (the command line does it first thing)
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        raise UserError(
            "`num_cpu_devices`: TensorFlow's devices are already initialised in this process; "
            "pass it to a new process (the train command does)"
        ) from None


def make_strategy(name: str, num_cpu_devices: int = 1):
    """The strategy `name` asks for, or None for one_device. Creates the multi-worker runtime,
    so it is called first thing, as TensorFlow requires."""
    split_cpu(num_cpu_devices)
    if name == "one_device":
        return None
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    check_tf_config(os.environ.get("TF_CONFIG"))
    return tf.distribute.MultiWorkerMirroredStrategy()


def check_tf_config(text: str | None) -> None:
    """One line for a missing or malformed TF_CONFIG (TensorFlow's own errors are long)."""
    example = (
        """e.g. '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, """
        """"task": {"type": "worker", "index": 0}}'"""
    )
    if not text:
        raise UserError(f"`strategy` multi_worker needs TF_CONFIG in the environment, {example}")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        ok = isinstance(workers, list) and workers and task["type"] in ("worker", "chief")
        ok = ok and isinstance(task["index"], int) and 0 <= task["index"]
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"TF_CONFIG is not a cluster and this worker's task in it: {example}")


def is_chief(strategy) -> bool:
    """The process that writes: any single-process run, or the multi-worker chief (the task
    of type 'chief', else worker 0), as TensorFlow's guide decides it."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    kind, index = resolver.task_type, resolver.task_id
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in resolver.cluster_spec().jobs


def worker_name(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    return f"{resolver.task_type} {resolver.task_id}" if resolver is not None else "this worker"


def describe(strategy) -> str:
    """One line: how many replicas, on which devices (this worker's), and how many workers."""
    devices = strategy.extended.worker_devices
    resolver = getattr(strategy, "cluster_resolver", None)
    workers = len(resolver.cluster_spec().as_dict().get("worker", [])) if resolver else 0
    where = f" on {workers} workers, here" if workers > 1 else ""
    if strategy.num_replicas_in_sync == 1:
        return (
            f"1 replica, on {devices[0]}: no second device to share the batch with (no second "
            f"GPU; --num_cpu_devices N splits the CPU to try it)"
        )
    return (
        f"{strategy.num_replicas_in_sync} replica(s){where} on {', '.join(devices)}: each step's "
        f"batch is split across them"
    )


def check_batch(batch_size: int, replicas: int) -> None:
    if batch_size % replicas:
        raise UserError(
            f"`batch_size` {batch_size} does not split across {replicas} replicas: use a "
            f"multiple of {replicas} (it is the global batch; each replica gets batch_size / "
            f"{replicas})"
        )


def chief_values(strategy, values: list[int]) -> list[int]:
    """The chief's `values` (int64) on every worker: an all-reduce to which only replica 0
    (the chief's first) adds. Without a strategy, the values themselves."""
    if strategy is None:
        return list(values)

    @tf.function(autograph=False)
    def gather(v):
        def first(v):
            ctx = tf.distribute.get_replica_context()
            mine = tf.where(tf.equal(ctx.replica_id_in_sync_group, 0), v, tf.zeros_like(v))
            return ctx.all_reduce("sum", mine)

        return strategy.run(first, args=(v,))

    out = gather(tf.constant(values, tf.int64))
    return [int(x) for x in strategy.experimental_local_results(out)[0].numpy()]


def check_same_step(strategy, step: int) -> None:
    """Every worker must resume from the chief's checkpoint: the run's directory has to be
    shared, or copied to every machine."""
    chief_step = chief_values(strategy, [step])[0]
    if chief_step != step:
        raise UserError(
            f"{worker_name(strategy)} starts at step {step} but the chief at step {chief_step}: "
            f"every worker must see the run's checkpoints (a shared `checkpoint_dir`, or a copy "
            f"of the chief's run directory on each machine)"
        )


class ReplicatedTrainer(Trainer):
    """A `Trainer` whose step runs on every replica of `strategy`: create it (and the model)
    under `strategy.scope()`. Each replica's gradients are one compiled (XLA) function; the
    all-reduce and the update run around it, in the strategy's graph."""

    def __init__(self, model, cfg, strategy):
        super().__init__(model, cfg)
        self.strategy, self.replicas = strategy, strategy.num_replicas_in_sync
        self.stop_requested = False
        gradients = tf.function(self.gradients, jit_compile=True, autograph=False)

        def replica_step(windows, stop):
            out = self.update(*gradients(windows))
            out["stop"] = sum_over_replicas(stop)
            return out

        self._step = tf.function(
            lambda windows, stop: strategy.run(replica_step, args=(windows, stop)),
            autograph=False,
        )
        self.train_step = self._train_replicated

    def _train_replicated(self, windows):
        """windows [accumulate, batch, L + 1]: the global batch; replica r takes rows
        r * batch / replicas onwards."""
        b = windows.shape[1] // self.replicas
        stop = float(self.stop_requested)

        def take(ctx):
            r = ctx.replica_id_in_sync_group
            return windows[:, r * b : (r + 1) * b]  # [accumulate, b, L + 1]

        values = self.strategy.experimental_distribute_values_from_function(take)
        stops = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(stop)
        )
        out = self._step(values, stops)
        return {k: self.strategy.experimental_local_results(v)[0] for k, v in out.items()}


@contextlib.contextmanager
def lost_workers(strategy, then: str):
    """A peer that stopped (its error, a kill, a lost machine) aborts this worker's collectives
    (TensorFlow's heartbeats notice within seconds): one line instead of TensorFlow's pages.
    Without a strategy there are no peers and errors pass through unchanged."""
    if strategy is None:
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
        raise UserError(
            f"a worker stopped or cannot be reached ({type(e).__name__}); {then}"
        ) from None


WORKER_PREFIX = "gpt2_tf2-worker-"


def worker_directory() -> str:
    """A non-chief worker's own run directory: it saves there (every worker takes part in a
    save) and `remove_worker_directory` removes it when training ends. Those of workers that
    were killed (kill -9 cleans nothing up) are removed first: their run lock is free."""
    remove_stale_worker_directories()
    return tempfile.mkdtemp(prefix=WORKER_PREFIX)


def remove_stale_worker_directories() -> None:
    """Our temporary worker directories whose lock no process holds (its owner is gone)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(WORKER_PREFIX) or not os.path.isdir(path):
            continue
        try:
            fd = os.open(os.path.join(path, ".lock"), os.O_RDWR)
        except OSError:
            continue  # not locked yet (just made by a starting worker) or not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live worker's
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def remove_worker_directory(directory: str) -> None:
    if os.path.basename(directory).startswith(WORKER_PREFIX):  # only what we made
        shutil.rmtree(directory, ignore_errors=True)
