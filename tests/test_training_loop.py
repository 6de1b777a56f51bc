"""The training loop and a whole run in-process: callbacks, stop requests, resume, config."""

import dataclasses
import inspect
import os

import numpy as np
import pytest

from gpt2_tf2.cli.train import train as train_command
from gpt2_tf2.core.hparams import HParams
from gpt2_tf2.core.model import GPT2
from gpt2_tf2.errors import UserError
from gpt2_tf2.training import data
from gpt2_tf2.training.config import TrainConfig
from gpt2_tf2.training.loop import Callback, Loop
from gpt2_tf2.training.step import Trainer

HP = HParams(n_vocab=50, n_ctx=16, n_embd=16, n_head=2, n_layer=1)


class Recorder(Callback):
    def __init__(self, stop_at=None, fail_at=None):
        self.events, self.stop_at, self.fail_at = [], stop_at, fail_at

    def on_start(self, loop):
        self.events.append(("start", loop.step))

    def on_step(self, loop, step, metrics):
        self.events.append(("step", step, round(metrics["loss"], 4) > 0, metrics["seconds"] > 0))
        if step == self.stop_at:
            loop.request_stop("test")
        if step == self.fail_at:
            raise RuntimeError("boom")

    def on_end(self, loop):
        self.events.append(("end", loop.step))

    def close(self, loop):
        self.events.append(("close", loop.step))


def make_loop(steps, *callbacks, batch_size=2):
    chunks = [np.arange(200, dtype=np.int32) % HP.n_vocab]
    batches = data.Batches(data.Sampler(chunks, 9, seed=3), batch_size, accumulate=1)
    trainer = Trainer(GPT2(HP, seed=1), TrainConfig(learning_rate=1e-2, seed=3))
    return Loop(trainer, batches, callbacks, steps)


def test_loop_calls_callbacks_in_order_until_the_step_limit():
    rec = Recorder()
    assert make_loop(3, rec).run() == 3
    steps = [("step", s, True, True) for s in (1, 2, 3)]
    assert rec.events == [("start", 0), *steps, ("end", 3), ("close", 3)]


def test_stop_request_ends_after_the_current_step_and_still_ends():
    rec = Recorder(stop_at=2)
    loop = make_loop(10, rec)
    assert loop.run() == 2 and loop.stop_reason == "test"
    assert rec.events[-2:] == [("end", 2), ("close", 2)]


def test_an_error_skips_the_end_but_closes():
    rec = Recorder(fail_at=1)
    with pytest.raises(RuntimeError, match="boom"):
        make_loop(10, rec).run()
    assert rec.events[-1] == ("close", 1) and ("end", 1) not in rec.events


def test_batches_are_a_function_of_the_step():
    """The iterator a strategy would distribute starts anywhere and gives what `at` gives."""
    chunks = [np.arange(300, dtype=np.int32)]
    batches = data.Batches(data.Sampler(chunks, 9, seed=5), batch_size=2, accumulate=3)
    it = batches.iterate(7)
    first, second = next(it), next(it)
    assert first.shape == (3, 2, 9)
    assert np.array_equal(first, batches.at(7)) and np.array_equal(second, batches.at(8))
    assert not np.array_equal(first, second)


def run_in_process(tiny_model_dir, corpus, tmp_path, steps, run_name):
    from gpt2_tf2.training import session

    cfg = TrainConfig(
        dataset=str(corpus),
        model_name=tiny_model_dir,
        run_name=run_name,
        checkpoint_dir=str(tmp_path / "ckpt"),
        sample_dir=str(tmp_path / "samples"),
        steps=steps,
        sequence_length=16,
        batch_size=2,
        sample_every=0,
        learning_rate=1e-3,
        seed=11,
        offline=True,
    )
    cfg.validate()
    run = session.start(cfg)
    session.loop(run).run()
    return {v.name: v.numpy() for v in run.trainer.model.variables}


@pytest.mark.e2e
def test_a_run_in_process_resumes_exactly(tiny_model_dir, tmp_path):
    """Two steps, then the same run to four, equals four in one go: checkpoints at the end of
    each loop, resumed from the run's newest."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    straight = run_in_process(tiny_model_dir, corpus, tmp_path, 4, "straight")
    run_in_process(tiny_model_dir, corpus, tmp_path, 2, "halves")
    resumed = run_in_process(tiny_model_dir, corpus, tmp_path, 4, "halves")
    assert straight.keys() == resumed.keys()
    assert max(float(np.max(np.abs(straight[k] - resumed[k]))) for k in straight) == 0.0
    assert (tmp_path / "ckpt" / "halves" / "ckpt-2.index").exists()


def test_the_command_takes_its_flags_and_defaults_from_the_config():
    params = inspect.signature(train_command).parameters
    for field in dataclasses.fields(TrainConfig):
        assert params[field.name].default == field.default, field.name
    assert set(params) == {f.name for f in dataclasses.fields(TrainConfig)} | {"verbose"}
    for name in params:
        assert f"  {name}: " in train_command.__doc__, name


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dataset": None}, "`dataset` is required"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"optimizer": "lion"}, "`optimizer` must be adam, adamw, sgd or adafactor"),
        ({"lr_schedule": "cosine"}, "`lr_schedule` cosine needs `steps`"),
        ({"top_p": 2}, r"`top_p` must be in \[0, 1\]"),
        ({"seed": -1}, "`seed` must be an integer from 0 to 2\\*\\*63 - 1"),
    ],
)
def test_config_is_validated_in_one_place(changes, message):
    """In the library's words (`name`); the train command says --name (test_train_cli)."""
    cfg = dataclasses.replace(TrainConfig(dataset="d.txt"), **changes)
    with pytest.raises(UserError, match=message):
        cfg.validate()
    TrainConfig(dataset="d.txt").validate()  # the defaults are valid


def test_a_resumed_log_drops_the_steps_after_its_checkpoint(tmp_path):
    from gpt2_tf2.training.callbacks import drop_steps_after

    log = tmp_path / "log.tsv"
    log.write_text("".join(f"{s}\t2.5\t1e-3\t100.0\n" for s in range(1, 9)))
    drop_steps_after(str(log), 5)  # the checkpoint was at step 5; steps 6-8 are redone
    assert [line.split("\t")[0] for line in log.read_text().splitlines()] == list("12345")
    assert sorted(os.listdir(tmp_path)) == ["log.tsv"]


def test_the_train_command_says_the_settings_as_its_flags(tmp_path):
    """The same checks through the command: each `name` the library names is its flag."""
    from conftest import run_main
    from gpt2_tf2.cli import train as train_cli

    for argv, line in [
        (["--lr_schedule", "cosine"], "--lr_schedule cosine needs --steps"),
        (["--batch_size", "0"], "--batch_size must be an integer >= 1, got 0"),
        (["--run_name", "../x"], "--run_name must be one directory name under --checkpoint_dir"),
    ]:
        code, out, err = run_main(train_cli.main, ["--dataset", str(tmp_path / "d.txt"), *argv])
        assert code == 2 and err.startswith(f"error: {line}") and err.count("\n") == 1, err
