"""Files in and out: the text files a corpus names (files, directories, globs), read strictly as
one encoding; and writing a small file whole or not at all, the one way every small file of ours
is written, or a new directory whole (`replace_into`)."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil

from gpt2_tf2.errors import UserError, reason


def write_atomically(path: str, text, tmp: str | None = None) -> None:
    """`text` (or bytes) to `path` through a temporary file (`tmp`, default `PATH.tmp-PID`),
    flushed to disk and renamed into place: a reader, or a kill, sees the old file or the new
    one. The temporary file is removed if anything fails."""
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    binary = not isinstance(text, str)  # bytes, bytearray or memoryview
    try:
        with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_run_name(run_name) -> str:
    """A run name is one directory name below the checkpoint directory: no path separator, not
    `.` or `..`, not absolute, so a run can never reach outside it (`../` once made the checkpoint
    directory itself the run's, and `--overwrite` wiped every run in it)."""
    name = run_name if isinstance(run_name, str) else None
    separators = [s for s in (os.sep, os.altsep, "/", "\\") if s]
    if (
        not name
        or name.strip() in ("", ".", "..")
        or any(s in name for s in separators)
        or "\0" in name
        or os.path.isabs(name)
    ):
        raise UserError(
            f"`run_name` must be one directory name under `checkpoint_dir` (no '/', not "
            f"'.' or '..'), got {run_name!r}"
        )
    return name


def human_size(nbytes: float) -> str:
    """A size for a message: '40 bytes', '12.3 kB', '497.8 MB', '3.0 GB' (SI units)."""
    if nbytes < 1e3:
        return f"{int(nbytes)} bytes"
    unit, scale = ("kB", 1e3) if nbytes < 1e6 else ("MB", 1e6) if nbytes < 1e9 else ("GB", 1e9)
    return f"{nbytes / scale:.1f} {unit}"


def user_cache_dir(*parts: str) -> str:
    """A directory under the user's cache ($XDG_CACHE_HOME, else ~/.cache): gpt2_tf2's compiled
    and converted programs live there."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpt2_tf2", *parts)


def check_new_dir(out: str) -> None:
    """`out` may be written as a whole directory: it is new, or an empty directory."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: exists and is a file, not a directory; choose a new directory")
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"{out}: exists and is not empty; choose a new or empty directory")


def replace_into(out: str, write, needed: int | None = None) -> None:
    """`write(tmp)` fills a temporary directory beside `out`, which is then renamed into place
    (an empty `out` is replaced, anything else refused): a failure leaves nothing half-written.
    `needed`: about how many bytes it writes, said when the disk is full."""
    check_new_dir(out)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"{out}: directory {parent} does not exist")
    tmp = _new_dir(parent)
    try:
        write(tmp)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (rmdir refuses anything else): replaced by the finished one
        os.replace(tmp, out)
    except Exception as e:  # OSError, or TensorFlow's OpError (ResourceExhaustedError: disk full)
        if not isinstance(e, OSError) and not type(e).__module__.startswith("tensorflow"):
            raise
        raise UserError(f"{out}: cannot write ({reason(e)}){_needed(e, needed)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _new_dir(parent: str) -> str:
    """A new directory of a name of its own in `parent`, with the permissions of any directory
    made there (0755 under umask 022): renamed into place, it is the output. mkdtemp's are 0700,
    and exports and converted models came out readable by their owner only (a server in another
    account or container could not read them)."""
    path = os.path.join(parent, f".gpt2_tf2-tmp-{os.getpid()}-{os.urandom(8).hex()}")
    try:
        os.mkdir(path)  # fails if it exists: 64 random bits and the process id make that moot
    except OSError as e:
        raise UserError(f"{parent}: cannot write there ({reason(e)})") from None
    return path


def _needed(e: Exception, needed: int | None) -> str:
    """'; about N needed: free space ...' when `e` is a full disk and the size is known."""
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
    if not full:
        return ""
    about = f"about {human_size(needed)} needed; " if needed else ""
    return f"; {about}nothing was written: free space and run it again"


def list_files(path: str) -> list[str]:
    """The files `path` names: itself, all files below a directory (sorted), or glob matches."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        found = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        return found
    return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))


def read_text(path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not valid {encoding} at byte {e.start}; convert it, or pass "
            f"`encoding`, or `errors` replace"
        ) from None
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}") from None


def read_json_object(path: str) -> dict:
    """A JSON file holding an object, or one line saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
