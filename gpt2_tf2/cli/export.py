"""`python -m gpt2_tf2.export --run_name R --out DIR`: a run as an OpenAI model directory; with
`--format savedmodel`, a run or a model directory as a SavedModel for TensorFlow Serving; with
`--format tflite`, its decode step as a TensorFlow Lite file beside its vocabulary."""

from __future__ import annotations

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError

EXPORT_DTYPES = ("float32", "float16")
FORMATS = ("openai", "savedmodel", "tflite")


def export(
    run_name=None,
    out=None,
    checkpoint_dir="checkpoint",
    dtype="float32",
    format="openai",  # noqa: A002 (the flag's name)
    model_name=None,
    models_dir="models",
    verbose=False,
):
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
        With --format tflite: float32, int8 (weights in 8 bits, a quarter of the size) or int4
        (4 bits and a scale per 32 weights; docs/tflite.md).
      format: openai (the model directory every command reads), savedmodel: a TensorFlow
        SavedModel with 'generate' and 'score' serving signatures, for TensorFlow Serving or
        tf.saved_model.load without this package (docs/tf-serving.md), or tflite: model.tflite
        (one decode step with its key/value cache as inputs and outputs), hparams.json and the
        vocabulary, for TensorFlow Lite's bindings (docs/tflite.md).
      model_name: with --format savedmodel or tflite, a model directory (or release name under
        models_dir) to export instead of a run.
      models_dir: where release names are looked up.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    if format not in FORMATS:
        raise UserError(f"--format must be openai, savedmodel or tflite, got {format!r}")
    if format == "savedmodel":
        return export_savedmodel(run_name, model_name, out, checkpoint_dir, models_dir)
    if format == "tflite":
        return export_tflite(run_name, model_name, out, checkpoint_dir, models_dir, dtype)
    if model_name is not None:
        raise UserError(
            "--model_name goes with --format savedmodel or tflite; a run exports by --run_name"
        )
    if run_name is None or out is None:
        raise UserError("export needs --run_name and --out")
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"--dtype must be float32 or float16, got {dtype!r}")
    from gpt2_tf2.training import runs

    source = runs.export(str(run_name), str(out), str(checkpoint_dir), dtype)
    print(f"exported {source} to {out}")
    return None


def export_savedmodel(run_name, model_name, out, checkpoint_dir, models_dir):
    """A run's or a model directory's weights as a SavedModel in `out` (new or empty)."""
    if (run_name is None) == (model_name is None) or out is None:
        raise UserError("--format savedmodel needs --out and one of --run_name, --model_name")
    from gpt2_tf2.files import check_new_dir, replace_into

    out = str(out)
    check_new_dir(out)  # before the model is read
    from gpt2_tf2.formats import model_dir as formats
    from gpt2_tf2.generation.savedmodel import write_savedmodel

    name = str(model_name) if model_name is not None else ""
    source = formats.locate(name, models_dir, False, run_name, checkpoint_dir)
    opened, model = formats.load_model_dir(source)
    needed = opened.hparams.num_params() * 4  # the variables, in float32
    replace_into(out, lambda tmp: write_savedmodel(model, opened.encoder.eot_token, tmp), needed)
    print(f"exported {source} to {out} (SavedModel: signatures generate, score)")
    return None


def export_tflite(run_name, model_name, out, checkpoint_dir, models_dir, dtype):
    """A run's or a model directory's decode step as model.tflite, with hparams.json and the
    vocabulary, in `out` (new or empty)."""
    if (run_name is None) == (model_name is None) or out is None:
        raise UserError("--format tflite needs --out and one of --run_name, --model_name")
    from gpt2_tf2.generation.checks import LITE_DTYPES

    if dtype not in LITE_DTYPES:
        raise UserError(f"--format tflite takes --dtype float32, int8 or int4, got {dtype!r}")
    from gpt2_tf2.files import check_new_dir, replace_into

    out = str(out)
    check_new_dir(out)  # before the model is read
    from gpt2_tf2.formats import model_dir as formats
    from gpt2_tf2.formats import tflite

    name = str(model_name) if model_name is not None else ""
    source = formats.locate(name, models_dir, False, run_name, checkpoint_dir)
    opened = formats.open_model_dir(source)
    tflite.check_size(opened.hparams, dtype)

    def weights():
        return formats.read_weights(opened)

    step = tflite.cached_step(opened, dtype, weights, runner.say)
    needed = tflite.weight_bytes(opened.hparams, dtype)
    replace_into(out, lambda tmp: tflite.write_export(step, opened, tmp), needed)
    print(f"exported {source} to {out} (TensorFlow Lite, {dtype}: model.tflite)")
    return None


export.positional = ()  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(export, argv, name="gpt2_tf2.export")
