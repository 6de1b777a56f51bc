"""`python -m gpt2_tf2.encode IN OUT.npz`: pre-encode a corpus for `train` (as nshepperd's)."""

from __future__ import annotations

import os

from gpt2_tf2.cli import runner
from gpt2_tf2.errors import UserError


def encode(
    in_text,
    out_npz,
    model_name="124M",
    models_dir="models",
    combine=50000,
    encoding="utf-8",
    errors="strict",
    overwrite=False,
    verbose=False,
):
    """Encode text into token chunks saved as .npz (nshepperd's format: arrays arr_0, arr_1, ...).

    Files are joined by the model's end-of-text token (50256 in GPT-2's vocabulary); a
    spelled-out <|endoftext|> in the text is that token too.

    Args:
      in_text: a text file, a directory (read recursively), a glob, or an existing .npz.
      out_npz: the .npz file to write (written to a temporary name, then renamed).
      model_name: release name under models_dir or a model directory; only its vocabulary
        (encoder.json and vocab.bpe, or sp.model) is read.
      models_dir: directory holding the release directories.
      combine: join files into chunks of at least this many characters.
      encoding: the text files' encoding.
      errors: 'strict' (an undecodable byte is an error naming the file and offset) or 'replace'.
      overwrite: replace out_npz if it exists; without it an existing file is refused.
      verbose: show TensorFlow's log messages.
    """
    runner.configure_logging(verbose)
    from gpt2_tf2.formats.model_dir import resolve_model_dir
    from gpt2_tf2.tokenizer import load_encoder
    from gpt2_tf2.training import data as dataset

    if errors not in ("strict", "replace", "ignore"):
        raise UserError(f"--errors must be strict, replace or ignore, got {errors!r}")
    if isinstance(combine, bool) or not isinstance(combine, int) or combine < 1:
        raise UserError(f"--combine must be a positive integer, got {combine!r}")
    out_npz = str(out_npz)
    if not out_npz.endswith(".npz"):
        raise UserError(f"{out_npz}: the output name must end in .npz")
    if os.path.isdir(out_npz):
        raise UserError(f"{out_npz}: is a directory; name the .npz file to write")
    if os.path.exists(out_npz) and not overwrite:
        raise UserError(
            f"{out_npz}: exists; nothing was changed: name a new file, or add --overwrite to "
            f"replace it"
        )
    try:  # before the corpus is read: where it goes must be writable
        os.makedirs(os.path.dirname(os.path.abspath(out_npz)), exist_ok=True)
    except OSError as e:
        raise UserError(f"{out_npz}: cannot write ({e.strerror})") from None
    enc = load_encoder(resolve_model_dir(str(model_name), str(models_dir)))
    chunks = dataset.load_dataset(enc, str(in_text), combine, str(encoding), errors, progress=True)
    dataset.save_npz(chunks, out_npz)
    print(f"wrote {out_npz}: {sum(len(c) for c in chunks)} tokens in {len(chunks)} chunks")
    return None


encode.positional = ("in_text", "out_npz")  # what the command takes by position (cli/flags.py)


def main(argv=None):
    runner.run(encode, argv, name="gpt2_tf2.encode")
