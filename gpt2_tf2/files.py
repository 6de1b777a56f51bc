"""Writing a file whole or not at all, the one way every small file of ours is written."""

from __future__ import annotations

import os


def write_atomically(path: str, text: str, tmp: str | None = None) -> None:
    """`text` to `path` through a temporary file (`tmp`, default `PATH.tmp-PID`), flushed to
    disk and renamed into place: a reader, or a kill, sees the old file or the new one. The
    temporary file is removed if anything fails."""
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
