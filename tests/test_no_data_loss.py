"""Nothing of the user's is lost: exports never delete what they did not write, a run is never
started over on top of its checkpoints, one trainer per run, run.json whole or refused."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, run_in_process, write_random_model
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats.openai import MARKER, check_target
from gpt2_tf2.training import runs

RELEASE_FILES = {
    "checkpoint",
    "hparams.json",
    "encoder.json",
    "vocab.bpe",
    "model.ckpt.index",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.meta",
}


def test_writing_a_model_refuses_a_directory_it_did_not_write(tmp_path, vocab_files):
    notes = tmp_path / "d" / "notes"
    notes.parent.mkdir()
    notes.write_text("mine")
    with pytest.raises(UserError, match=r"not a model directory written by gpt2_tf2 .*notes"):
        write_random_model(tmp_path / "d", vocab_files)
    assert os.listdir(tmp_path / "d") == ["notes"] and notes.read_text() == "mine"
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match="exists and is not a directory"):
        write_random_model(tmp_path / "f", vocab_files)
    assert (tmp_path / "f").read_text() == "a file"


def test_an_earlier_export_is_replaced_file_by_file(tmp_path, vocab_files):
    write_random_model(tmp_path / "m", vocab_files, seed=1)
    before = (tmp_path / "m" / "model.ckpt.data-00000-of-00001").read_bytes()
    write_random_model(tmp_path / "m", vocab_files, seed=2)
    assert set(os.listdir(tmp_path / "m")) == RELEASE_FILES | {MARKER}
    assert (tmp_path / "m" / "model.ckpt.data-00000-of-00001").read_bytes() != before
    assert oct(os.stat(tmp_path / "m").st_mode & 0o777) == oct(0o777 & ~_umask())
    # Something of the user's beside it: refused from now on, and kept.
    (tmp_path / "m" / "README").write_text("about my model")
    with pytest.raises(UserError, match="README"):
        check_target(str(tmp_path / "m"))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_killed_export_leaves_no_temporary_after_the_next(tmp_path, vocab_files):
    write_random_model(tmp_path / "m", vocab_files)
    (tmp_path / "m" / ".gpt2_tf2-tmp-abc123").mkdir()  # what a kill -9 mid-export leaves
    (tmp_path / "m" / ".gpt2_tf2-tmp-abc123" / "model.ckpt.index").write_text("x")
    write_random_model(tmp_path / "m", vocab_files)
    assert set(os.listdir(tmp_path / "m")) == RELEASE_FILES | {MARKER}


def test_export_cli_keeps_what_is_at_out(tmp_path, tiny_model_dir):
    """`export --out DIR` deleted DIR whole; `--out .` and the run's own directory too."""
    ckpt = tmp_path / "ckpt" / "r"
    ckpt.mkdir(parents=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes").write_text("x")
    for out in (tmp_path / "d", tmp_path / "ckpt"):
        r = run_in_process(
            [
                "-m",
                "gpt2_tf2.export",
                "--run_name",
                "r",
                "--checkpoint_dir",
                str(tmp_path / "ckpt"),
                "--out",
                str(out),
            ]
        )
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
        assert "not a model directory written by gpt2_tf2" in r.stderr, r.stderr
    assert (tmp_path / "d" / "notes").read_text() == "x" and ckpt.is_dir()


@pytest.mark.e2e
def test_run_lock_names_the_holder_and_dies_with_it(tmp_path):
    directory = str(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from gpt2_tf2.training.runs import RunLock
            RunLock({directory!r}).acquire()
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another trainer \(process {holder.pid}\)"):
            runs.RunLock(directory).acquire()
    finally:
        holder.kill()  # kill -9: the OS drops the lock
        holder.wait()
    lock = runs.RunLock(directory).acquire()
    lock.release()


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    lock = runs.RunLock(str(tmp_path / "new")).acquire()
    lock.release()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("content", ["", '{"seed": 12', "[]", '{"optimizer": "adam"}'])
def test_run_json_unreadable_is_refused(tmp_path, content):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(UserError, match="run.json.*pass the run's `seed`"):
        runs.read_info(str(tmp_path))


def test_run_json_is_written_whole(tmp_path, monkeypatch):
    runs.write_json(str(tmp_path / "run.json"), {"seed": 5})

    def cut(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", cut)
    with pytest.raises(OSError):
        runs.write_json(str(tmp_path / "run.json"), {"seed": 6})
    assert json.loads((tmp_path / "run.json").read_text()) == {"seed": 5}
    assert os.listdir(tmp_path) == ["run.json"]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    import tensorflow as tf

    from gpt2_tf2.core.hparams import HParams
    from gpt2_tf2.core.model import GPT2
    from gpt2_tf2.training import callbacks
    from gpt2_tf2.training.config import TrainConfig
    from gpt2_tf2.training.step import Trainer

    hp = HParams(n_vocab=50, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    trainer = Trainer(GPT2(hp, seed=1), TrainConfig())
    _, manager = runs.make_manager(trainer, str(tmp_path))
    manager.save(checkpoint_number=1)
    before = sorted(os.listdir(tmp_path))

    class FullDisk:  # TensorFlow's manager, as it fails on a full disk: a partial ckpt-N_temp
        latest_checkpoint = manager.latest_checkpoint

        def save(self, checkpoint_number):
            partial = tmp_path / f"ckpt-{checkpoint_number}_temp"
            partial.mkdir()
            (partial / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 100)
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    saver = callbacks.Checkpoint(FullDisk(), str(tmp_path), every=1, trainer=trainer)
    with pytest.raises(UserError, match=r"cannot save ckpt-2 \(No space left on device\); about"):
        saver.save(2)
    assert sorted(os.listdir(tmp_path)) == before
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")


def test_a_full_disk_during_an_encode_leaves_nothing(tmp_path, monkeypatch):
    import numpy as np

    from gpt2_tf2.training import data

    def full(path, *arrays):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(
        UserError, match=r"o.npz: cannot write \(No space left on device\); up to 40 bytes needed"
    ):
        data.save_npz([np.arange(10, dtype=np.int32)], str(tmp_path / "o.npz"))
    assert os.listdir(tmp_path) == []


def test_overwrite_and_cleanup_remove_only_what_a_run_wrote(tmp_path):
    ours = ["ckpt-3.index", "ckpt-3.data-00000-of-00001", "checkpoint", "run.json", "log.tsv"]
    temporary = ["ckpt-4_temp", "run.json.tmp-123", "log.tsv.tmp-123", "checkpoint.tmp" + "ab" * 16]
    theirs = [
        "notes.txt",
        "ckpt-notes.txt",
        "checkpoint.bak",
        "checkpoint.tmp-mine",
        "hparams.json",
    ]
    for name in ours + temporary[1:] + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / "ckpt-4_temp").mkdir()
    (tmp_path / "logs").mkdir()
    runs.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(ours + theirs + ["logs"])
    runs.discard(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)


def test_a_directory_written_whole_has_the_usual_permissions(tmp_path):
    """`files.replace_into` (to-hf, the SavedModel and TFLite exports): the output directory is
    as readable as any directory made there (0755 under umask 022), not mkdtemp's 0700 (a server
    in another account or container could not read it), and no temporary is left."""
    from gpt2_tf2.files import replace_into

    replace_into(str(tmp_path / "out"), lambda tmp: open(os.path.join(tmp, "a"), "w").close())
    assert oct(os.stat(tmp_path / "out").st_mode & 0o777) == oct(0o777 & ~_umask())
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["a"]


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """`files.replace_into` where its temporary directory cannot be made (a read-only parent: root
    is not refused by permissions, so mkdir is made to fail as it would): one UserError naming the
    parent and why, nothing written."""
    from gpt2_tf2.files import replace_into

    def refused(path, *args):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "mkdir", refused)
    with pytest.raises(UserError, match=r"cannot write there \(Permission denied\)") as e:
        replace_into(str(tmp_path / "out"), lambda tmp: None)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
