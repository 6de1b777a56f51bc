"""Training under `tf.distribute` (train --strategy): the mirrored strategy over two logical CPU
devices and two worker processes on 127.0.0.1 with the multi-worker strategy give the weights of
one device with the same global batch; checkpoints move between replica counts; a stop request
on one worker stops every worker after the same step; a killed worker leaves the newest
checkpoint loadable. The logical devices a strategy spreads over are fixed before TensorFlow's
first operation, once per process: the runs on two logical CPUs are the `train` command's
entry point called one after another in one process that split its CPU (`split_runs`), the
multi-worker runs one process per worker, as a user runs them (these are the e2e tier's). The
one-device reference run and the checks of bad input that come before any device is split run
in the test process."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import built_once, cli_env, run_cli, run_in_process, training_run_once

TEXT = "one two three four five six seven eight nine ten. " * 60
N = 6  # steps; checkpoints every N // 2
MAX_DIFF = 1e-5  # the bound on weights after N steps, against one device


@pytest.fixture(scope="module")
def work(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distribute")
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    encode = ["-m", "gpt2_tf2.encode", str(root / "data.txt"), str(root / "data.npz")]
    r = run_cli([*encode, "--model_name", tiny_model_dir])
    assert r.returncode == 0, r.stderr
    (root / "tmp").mkdir()  # TMPDIR of the runs: a worker's temporary checkpoints go there
    return root


def train_args(work, model, run, *extra, steps=N):
    return [
        "-m",
        "gpt2_tf2.train",
        "--dataset",
        str(work / "data.npz"),
        "--model_name",
        model,
        "--run_name",
        run,
        "--checkpoint_dir",
        str(work / "ckpt"),
        "--steps",
        str(steps),
        "--batch_size",
        "4",
        "--accumulate_gradients",
        "2",
        "--sequence_length",
        "16",
        "--optimizer",
        "adamw",
        "--learning_rate",
        "3e-3",
        "--grad_clip",
        "1.0",
        "--noise",
        "0.05",
        "--seed",
        "11",
        "--sample_every",
        "0",
        "--save_every",
        str(N // 2),
        *extra,
    ]


def state(work, run, step=None):
    """Every tensor of the run's checkpoint (newest, or at `step`) but the count of saves."""
    directory = str(work / "ckpt" / run)
    path = tf.train.latest_checkpoint(directory) if step is None else f"{directory}/ckpt-{step}"
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "OBJECT_GRAPH" not in name and not name.startswith("save_counter")
    }


def losses(work, run):
    lines = (work / "ckpt" / run / "log.tsv").read_text().splitlines()
    return {int(line.split("\t")[0]): float(line.split("\t")[1]) for line in lines}


def max_diff(a, b):
    assert set(a) == set(b)  # model, optimizer slots and iterations, global step
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


@pytest.fixture(scope="module")
def one_device(work, tiny_model_dir, tmp_path_factory):
    """The reference: one device needs no split of the CPU, so it runs in the test process."""

    def train_run():
        r = run_in_process(train_args(work, tiny_model_dir, "one"), cwd=work)
        assert r.returncode == 0, r.stderr
        return r

    training_run_once(tmp_path_factory, "distribute_one", work / "ckpt", "one", train_run)
    return state(work, "one"), losses(work, "one")


MIRRORED = ["--strategy", "mirrored", "--num_cpu_devices", "2"]
# The runs on two replicas, in the order they run (a resumed run after the one it resumes):
# (run, extra arguments, steps). Memory-saving gradients on in the reference run (they change
# no value); --batch_size 3 does not split across the replicas.
SPLIT_RUNS = [
    ("two", ["--memory_saving_gradients"], N),
    ("dropout", ["--dropout", "0.2"], N),
    (
        "dropout_resumed",
        ["--restore_from", f"{{ckpt}}/dropout/ckpt-{N // 2}", "--dropout", "0.2"],
        N,
    ),
    ("resumed_on_mirrored", ["--restore_from", f"{{ckpt}}/two/ckpt-{N // 2}"], N),
    ("fp16", ["--mixed_precision", "fp16"], 3),
    ("bad", ["--batch_size", "3"], N),
]
SPLIT_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from gpt2_tf2.cli.runner import configure_xla_cache
configure_xla_cache()  # before TensorFlow is imported, as the command line does
from gpt2_tf2.training import distribute
distribute.split_cpu(2)  # before TensorFlow's first operation, as the command line does
from conftest import run_in_process
runs, cwd = json.load(open(sys.argv[2])), sys.argv[3]
out = {name: vars(run_in_process(args, cwd=cwd)) for name, args in runs}
json.dump({name: [r["returncode"], r["stdout"], r["stderr"]] for name, r in out.items()},
          open(sys.argv[4], "w"))
"""


@pytest.fixture(scope="module")
def split_runs(work, tiny_model_dir, tmp_path_factory):
    """Every run of SPLIT_RUNS through the train command's entry point, one after another in
    one process that split its CPU into two logical devices (a process splits it once: a
    process per run paid TensorFlow's import each time), once per test run for both workers
    (`built_once`); each worker's checkpoint directory gets a copy. {run: CompletedProcess}."""
    ckpt = str(work / "ckpt")
    runs = [
        (name, train_args(work, tiny_model_dir, name, *MIRRORED, *extra, steps=steps))
        for name, extra, steps in SPLIT_RUNS
    ]
    runs = [(name, [a.replace("{ckpt}", ckpt) for a in args]) for name, args in runs]

    def build(directory):
        (directory / "runs.json").write_text(json.dumps(runs))
        args = ["-c", SPLIT_CHILD, os.path.dirname(__file__), str(directory / "runs.json")]
        args += [str(work), str(directory / "out.json")]
        r = run_cli(args, cwd=work, env={"TMPDIR": str(work / "tmp")}, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        for name, _, _ in SPLIT_RUNS:
            if (work / "ckpt" / name).exists():
                shutil.copytree(work / "ckpt" / name, directory / name)

    built = built_once(tmp_path_factory, "distribute_split", build)
    for name, _, _ in SPLIT_RUNS:
        if (built / name).exists() and not (work / "ckpt" / name).exists():
            shutil.copytree(built / name, work / "ckpt" / name)
    found = json.loads((built / "out.json").read_text())
    return {name: subprocess.CompletedProcess([], *found[name]) for name in found}


@pytest.fixture(scope="module")
def mirrored(split_runs):
    """Two replicas on two logical CPUs (SPLIT_RUNS' "two")."""
    r = split_runs["two"]
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.e2e
def test_mirrored_equals_one_device(work, one_device, mirrored):
    weights, logged = one_device
    diff = max_diff(state(work, "two"), weights)
    assert diff <= MAX_DIFF, f"max abs difference {diff}"
    assert sorted(losses(work, "two")) == list(range(1, N + 1))
    assert max(abs(losses(work, "two")[s] - logged[s]) for s in logged) <= MAX_DIFF
    assert f"ckpt-{N}" in mirrored.stdout + mirrored.stderr
    assert "2 replica(s) on /job:localhost/replica:0/task:0/device:CPU:0, " in mirrored.stderr


@pytest.mark.e2e
def test_dropout_under_mirrored_resumes_exactly(work, one_device, split_runs):
    """--dropout on two replicas: each draws its own masks, keyed by seed, step and replica, so
    a run resumed from its checkpoint at N/2 ends where it ended; and not where the run
    without dropout did."""
    for name in ("dropout", "dropout_resumed"):
        assert split_runs[name].returncode == 0, split_runs[name].stderr
    assert f"at step {N // 2}" in split_runs["dropout_resumed"].stderr
    assert max_diff(state(work, "dropout_resumed"), state(work, "dropout")) == 0
    assert max_diff(state(work, "dropout"), one_device[0]) > 1e-4


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_two_replica_checkpoint_resumes(
    work, tiny_model_dir, one_device, mirrored, split_runs, strategy
):
    """Written by two replicas at N/2, resumed on one or on two: the uninterrupted run's end."""
    run = f"resumed_on_{strategy}"
    if strategy == "mirrored":  # SPLIT_RUNS' "resumed_on_mirrored"
        r = split_runs[run]
    else:  # one device splits no CPU: in-process
        half = str(work / "ckpt" / "two" / f"ckpt-{N // 2}")
        args = [run, "--restore_from", half, "--strategy", strategy]
        r = run_in_process(train_args(work, tiny_model_dir, *args), cwd=work)
    assert r.returncode == 0, r.stderr
    assert f"at step {N // 2}" in r.stderr
    diff = max_diff(state(work, run), one_device[0])
    assert diff <= MAX_DIFF, f"max abs difference {diff}"


@pytest.mark.e2e
def test_fp16_under_mirrored(work, one_device, split_runs):
    """Mixed precision with dynamic loss scaling under a strategy: it trains as float32 does."""
    assert split_runs["fp16"].returncode == 0, split_runs["fp16"].stderr
    logged, float32 = losses(work, "fp16"), one_device[1]
    assert sorted(logged) == [1, 2, 3]
    assert max(abs(logged[s] - float32[s]) for s in logged) <= 0.02
    assert "loss_scale/.ATTRIBUTES/VARIABLE_VALUE" in state(work, "fp16")


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(work, args, n=2, chief_args=None):
    """One `train --strategy multi_worker` process per worker, TF_CONFIG as on n machines
    (`chief_args`: worker 0's own arguments instead of `args`)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(n)]}
    procs = []
    for index in range(n):
        mine = chief_args if index == 0 and chief_args is not None else args
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = cli_env({"TF_CONFIG": tf_config, "TMPDIR": str(work / "tmp")})
        procs.append(
            subprocess.Popen(
                [sys.executable, *mine, "--strategy", "multi_worker"],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs, timeout=300):
    return [p.communicate(timeout=timeout) for p in procs]


def worker_dirs(work):
    return [name for name in os.listdir(work / "tmp") if name.startswith("gpt2_tf2-worker-")]


@pytest.mark.e2e
def test_multi_worker_equals_one_device(work, tiny_model_dir, one_device):
    """Also with validation and samples on (the chief's alone; they change no weight)."""
    chief_only = ["--val_every", "3", "--val_batch_count", "2", "--sample_every", "3"]
    chief_only += ["--val_dataset", str(work / "data.npz")]  # the training data stays whole
    args = train_args(work, tiny_model_dir, "workers", *chief_only, "--sample_length", "8")
    procs = start_workers(work, args)
    (chief_out, chief_err), (worker_out, worker_err) = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], chief_err + worker_err
    diff = max_diff(state(work, "workers"), one_device[0])
    assert diff <= MAX_DIFF, f"max abs difference {diff}"
    assert f"saved {work / 'ckpt' / 'workers'}/ckpt-{N}" in chief_out
    assert "validation loss" in chief_out and chief_out.count("SAMPLE 1") == 2
    assert (work / "samples" / "workers" / f"samples-{N}").exists()
    assert worker_out == "" and worker_err.strip() == ""  # the chief alone reports
    assert worker_dirs(work) == []  # the other worker's checkpoints were temporary


def wait_for(predicate, procs, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.1)
    raise AssertionError("timed out")


def newest_step(work, run):
    path = tf.train.latest_checkpoint(str(work / "ckpt" / run))
    return None if path is None else int(path.rsplit("-", 1)[1])


@pytest.mark.e2e
def test_stop_resume_and_kill_multi_worker(work, tiny_model_dir):
    """SIGTERM on worker 1 stops both after one step and saves; both resume from there; kill -9
    on worker 1 ends the chief with one line, and the newest checkpoint loads."""
    args = train_args(work, tiny_model_dir, "stop", steps=10000)
    args[args.index("--save_every") + 1] = "5"
    procs = start_workers(work, args)
    wait_for(lambda: len(logged_steps(work, "stop")) >= 3, procs)
    procs[1].send_signal(signal.SIGTERM)
    (_, chief_err), (_, worker_err) = finish(procs)
    assert procs[1].returncode == 128 + signal.SIGTERM, worker_err
    assert procs[0].returncode == 0, chief_err
    assert "another worker was asked to stop" in chief_err
    stopped = newest_step(work, "stop")
    assert stopped == max(logged_steps(work, "stop"))  # saved at the step both stopped after
    assert worker_dirs(work) == []

    procs = start_workers(work, args)
    wait_for(lambda: (newest_step(work, "stop") or 0) > stopped, procs)
    procs[1].kill()
    (_, chief_err), _ = finish(procs, timeout=180)
    assert len(worker_dirs(work)) == 1  # kill -9 left the worker's; the next start removes it
    assert "resuming from" in chief_err and f"at step {stopped}" in chief_err
    assert procs[0].returncode not in (0, None)
    last = chief_err.strip().splitlines()[-1]
    assert last.startswith("error: a worker stopped or cannot be reached"), chief_err[-2000:]
    assert "Traceback" not in chief_err
    assert state(work, "stop")["step/.ATTRIBUTES/VARIABLE_VALUE"] == newest_step(work, "stop")


@pytest.mark.e2e
def test_a_worker_that_fails_to_start_ends_the_others_with_one_line(work, tiny_model_dir):
    """The chief stops on bad input (a dataset that is not there); the other worker, waiting
    for it, ends with one line pointing at the chief's output, not with TensorFlow's pages."""
    args = train_args(work, tiny_model_dir, "half_started")
    stale = work / "tmp" / "gpt2_tf2-worker-killed"  # as a kill -9 leaves one: lock free
    stale.mkdir()
    (stale / ".lock").write_text("12345\n")
    bad = list(args)
    bad[bad.index("--dataset") + 1] = str(work / "missing.txt")
    procs = start_workers(work, args, chief_args=bad)
    (_, chief_err), (_, worker_err) = finish(procs, timeout=240)
    assert procs[0].returncode == 2 and "missing.txt" in chief_err, chief_err[-2000:]
    assert procs[1].returncode == 2, worker_err[-2000:]
    assert (
        worker_err.strip()
        .splitlines()[-1]
        .startswith("error: a worker stopped or cannot be reached")
    )
    assert "Traceback" not in worker_err and "its own output says why" in worker_err
    assert worker_dirs(work) == []  # its own, and the killed one's


def logged_steps(work, run):
    path = work / "ckpt" / run / "log.tsv"
    return losses(work, run) if path.exists() else {}


@pytest.mark.parametrize(
    "extra, env, expected",
    [
        (["--strategy", "multi_worker"], {}, "needs TF_CONFIG in the environment"),
        (["--strategy", "multi_worker"], {"TF_CONFIG": "{"}, "TF_CONFIG is not a cluster"),
        (["--strategy", "several"], {}, "--strategy must be one_device, mirrored or"),
        (["--num_cpu_devices", "0"], {}, "--num_cpu_devices must be an integer >= 1"),
        (
            ["--strategy", "mirrored", "--num_cpu_devices", "2", "--batch_size", "3"],
            {},
            "--batch_size 3 does not split across 2 replicas",
        ),
    ],
)
@pytest.mark.e2e
def test_bad_strategy_input(work, tiny_model_dir, extra, env, expected, monkeypatch, request):
    if "--num_cpu_devices" in extra and extra[extra.index("--num_cpu_devices") + 1] != "0":
        # Its check comes after the CPU is split, which only a new process can do: SPLIT_RUNS'
        # "bad", the same arguments.
        r = request.getfixturevalue("split_runs")["bad"]
    else:
        args = train_args(work, tiny_model_dir, "bad") + extra
        monkeypatch.delenv("TF_CONFIG", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        r = run_in_process(args, cwd=work)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {r.stderr.split('error: ', 1)[1].strip()}"]
    assert expected in r.stderr
    assert not (work / "ckpt" / "bad").exists()


def test_noise_does_not_depend_on_the_split():
    """--noise on replica r of k is rows r*b.. of the draw one device makes for the batch."""
    from gpt2_tf2.training.step import add_noise

    windows = tf.reshape(tf.range(4 * 9, dtype=tf.int32), [4, 9])
    seed = tf.constant([3, 5], tf.int64)
    whole = add_noise(windows, 0.5, 1000, seed)
    parts = [add_noise(windows[r * 2 : r * 2 + 2], 0.5, 1000, seed, r, 2) for r in range(2)]
    np.testing.assert_array_equal(tf.concat(parts, 0), whole)
    assert np.mean(whole.numpy() != windows.numpy()) > 0.2  # the noise is there


def test_only_our_unlocked_worker_directories_are_removed(tmp_path, monkeypatch):
    """The sweep of killed workers' directories touches nothing else: not one whose lock a
    live worker holds, not another directory with a free .lock, not a file of that name."""
    import fcntl
    import tempfile

    from gpt2_tf2.training import distribute

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    names = ["gpt2_tf2-worker-dead", "gpt2_tf2-worker-live", "gpt2_tf2-worker-nolock", "mine"]
    for name in names:
        (tmp_path / name).mkdir()
        if name != "gpt2_tf2-worker-nolock":
            (tmp_path / name / ".lock").write_text("1\n")
    (tmp_path / "gpt2_tf2-worker-file").write_text("a user's file")
    held = os.open(tmp_path / "gpt2_tf2-worker-live" / ".lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        distribute.remove_stale_worker_directories()
    finally:
        os.close(held)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(set(names + ["gpt2_tf2-worker-file"]) - {"gpt2_tf2-worker-dead"})
    distribute.remove_worker_directory(str(tmp_path / "mine"))  # not a worker directory
    assert (tmp_path / "mine").is_dir()
