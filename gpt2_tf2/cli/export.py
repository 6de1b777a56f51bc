"""`python -m gpt2_tf2.export --run_name R --out DIR`: a run as an OpenAI model directory."""

from __future__ import annotations

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError

EXPORT_DTYPES = ("float32", "float16")


def export(run_name=None, out=None, checkpoint_dir="checkpoint", dtype="float32", verbose=False):
    """Write a run's newest weights in OpenAI's layout (the seven files), each file atomically.

    The directory is read by `sample`, `score`, `gpt2_tf2.load` and any tool that reads OpenAI's
    released models.

    Args:
      run_name: the run to export (checkpoint_dir/run_name).
      out: the model directory to write: a new or empty directory, or one an earlier export
        wrote (its files are replaced one by one); anything else there is refused, never
        deleted.
      checkpoint_dir: where run directories live.
      dtype: float32 (as trained), or float16: the weights stored in half the disk space (a
        relative rounding of 5e-4); every command and OpenAI's TF1 reader load them as usual.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    if run_name is None or out is None:
        raise UserError("export needs --run_name and --out")
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"--dtype must be float32 or float16, got {dtype!r}")
    from gpt2_tf2.training import runs

    source = runs.export(str(run_name), str(out), str(checkpoint_dir), dtype)
    print(f"exported {source} to {out}")
    return None


export.positional = ()  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(export, argv, name="gpt2_tf2.export")
