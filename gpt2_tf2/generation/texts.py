"""What becomes of generated tokens and text before the caller sees them: a row cut at its stop
token, and gpt-2-simple's conveniences (`truncate`, `include_prefix`, `sample_delim`,
`destination_path`), with its names, so that its users' scripts port. Pure functions; the files
are written whole or not at all."""

from __future__ import annotations

import os

from gpt2_tf2.errors import UserError
from gpt2_tf2.files import write_atomically

SAMPLE_DELIM = "=" * 20 + "\n"  # gpt-2-simple's default


def cut(row, stop: int) -> list[int]:
    """A row of generated ids (any integers) as Python ints, up to its first `stop` token (not
    included; stop -1: none)."""
    row = [int(t) for t in row]
    return row[: row.index(stop)] if stop >= 0 and stop in row else row


def finish(prompt: str | None, text: str, truncate: str | None, include_prefix: bool) -> str:
    """The continuation `text` cut before the first `truncate` (searched in the continuation
    only, never in the prompt), with the prompt in front if `include_prefix`."""
    if truncate:
        cut = text.find(truncate)
        if cut >= 0:
            text = text[:cut]
    return (prompt or "") + text if include_prefix else text


def joined(texts: list[str], sample_delim: str = SAMPLE_DELIM) -> str:
    """Samples as gpt-2-simple prints and writes them: each followed by a newline and the
    delimiter."""
    return "".join(f"{text}\n{sample_delim}" for text in texts)


def check_destination(path: str) -> None:
    """A new file only: samples never replace a file that is already there."""
    if os.path.exists(path):
        raise UserError(f"{path}: exists; choose another destination_path (nothing was replaced)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: directory {parent} does not exist")


def write(path: str, texts: list[str], sample_delim: str = SAMPLE_DELIM) -> None:
    check_destination(path)
    try:
        write_atomically(path, joined(texts, sample_delim))
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
