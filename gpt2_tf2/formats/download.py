"""Fetch OpenAI's released model directories over HTTP, resumably.

Mirrors openai/gpt-2's `download_model.py`: the seven files of a release from
`{base_url}/{model}/{file}`. Each file is written as `FILE.part`, resumed with an HTTP Range request
when a partial one exists and the server sends an MD5 to check the whole against, checked against
the size and MD5 the server announced, and only then renamed to its final name. A body that ends
early is never renamed: a cut connection or a chunked body without its last chunk (RFC 9112 7.1)
is an error. What HTTP cannot tell is a body without a length that the server ends early: when a
server sends neither a size nor an MD5, the file is kept and said to be unchecked, and `verify`
fails.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request

from gpt2_tf2.core.hparams import ALIASES, PRESETS, canonical_name
from gpt2_tf2.errors import UserError

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
BASE_URL_ENV = "GPT2_TF2_BASE_URL"  # a mirror, or a local server in tests
FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
APPROX_SIZE = {"124M": "500 MB", "355M": "1.4 GB", "774M": "3.1 GB", "1558M": "6.2 GB"}
CHUNK = 1 << 20


def base_url(explicit: str | None = None) -> str:
    return (explicit or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def _open(url: str, offset: int, timeout: float, method: str = "GET"):
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "gpt2_tf2"}, method=method)
    except ValueError:
        raise UserError(f"{url}: not a URL; give `base_url` as http(s)://host/path") from None
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our partial file is not a prefix of theirs: start over
            return None
        if e.code in (405, 501) and method == "HEAD":  # a server without HEAD: nothing known
            return None
        raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise UserError(
                f"{url}: no answer in {timeout:g} s; check the network or the mirror "
                f"(`base_url`, or {BASE_URL_ENV} in the environment), or raise `timeout`"
            ) from None
        raise UserError(
            f"{url}: cannot connect ({reason}); check the network or the mirror "
            f"(`base_url`, or {BASE_URL_ENV} in the environment)"
        ) from None


@dataclasses.dataclass(frozen=True)
class Remote:
    """What the server says of a file before it is fetched (a HEAD request)."""

    size: int | None = None
    md5: bytes | None = None  # Content-MD5, as Azure blob storage sends for OpenAI's releases

    @classmethod
    def of(cls, url: str, timeout: float) -> Remote:
        response = _open(url, 0, timeout, method="HEAD")
        if response is None:
            return cls()
        with response:
            length = response.headers.get("Content-Length")
            md5 = response.headers.get("Content-MD5")
        try:
            digest = base64.b64decode(md5, validate=True) if md5 else None
        except ValueError:
            digest = None
        size = int(length) if length and length.isdigit() else None
        return cls(size, digest if digest and len(digest) == 16 else None)

    def mismatch(self, path: str, checksum: bool) -> str | None:
        """Why the file at `path` is not this one (size, or MD5 when `checksum`), or None."""
        size = os.path.getsize(path)
        if self.size is not None and size != self.size:
            return f"{size} bytes, the server has {self.size}"
        if checksum and self.md5 is not None and _md5(path) != self.md5:
            return "its MD5 differs from the server's"
        return None


def _md5(path: str) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.digest()


def fetch_file(
    url: str, dest: str, timeout: float = 60.0, progress: bool = True, remote: Remote = Remote()
) -> bool:
    """Download `url` to `dest` via `dest.part`, resuming a partial download when the server's
    MD5 can prove the result; the file gets its final name only once its size (and MD5, when the
    server sent one) are the server's. Returns whether anything was checked (size or MD5)."""
    from tqdm import tqdm

    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if offset and remote.md5 is None:  # nothing could tell a wrong prefix: start over
        print(f"{part}: the server sends no MD5 to check a resumed file by; fetching it whole",
              file=sys.stderr)  # fmt: skip
        os.remove(part)
        offset = 0
    response = _open(url, offset, timeout)
    if response is None:
        offset = 0
        os.remove(part)
        response = _open(url, 0, timeout)
    with response:
        if offset and response.status != 206:  # the server ignored the Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else remote.size
        mode = "ab" if offset else "wb"
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=os.path.basename(dest),
            disable=not progress,
            leave=True,
        )
        try:
            with open(part, mode) as f:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        except (socket.timeout, TimeoutError):
            raise UserError(
                f"{url}: the server stopped sending (no data for {timeout:g} s); "
                f"run the command again to resume"
            ) from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise UserError(
                f"{url}: connection lost ({type(e).__name__}); run the command again to resume"
            ) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise UserError(
                    f"{part}: disk full; free space and run the command again to resume"
                ) from None
            raise UserError(f"{part}: cannot write ({e.strerror})") from None
        finally:
            bar.close()
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise UserError(f"{url}: got {size} of {total} bytes; run the command again to resume")
    if remote.mismatch(part, checksum=True):
        os.remove(part)  # a resumed part that was not a prefix of the server's file
        raise UserError(f"{url}: the file's MD5 is not the server's; run the command again")
    os.replace(part, dest)
    return total is not None or remote.md5 is not None


def download_model(
    model_name: str,
    models_dir: str = "models",
    url: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    verify: bool = False,
) -> str:
    """Download one release into `models_dir/NAME`. A file already there is kept when its size
    is the server's (and, with `verify`, its MD5); else it is fetched again. A file nothing could
    check (the server sent neither size nor MD5; with `verify`, no MD5) is said so on stderr, and
    with `verify` it is an error once all are fetched. Returns the directory."""
    release = canonical_name(str(model_name))
    if release is None:
        names = ", ".join(list(PRESETS) + list(ALIASES))
        raise UserError(f"unknown release {model_name!r}; releases are {names}")
    model_dir = os.path.join(models_dir, release)
    created = not os.path.exists(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    try:
        _fetch_all(model_dir, release, url, timeout, progress, verify)
    except BaseException:
        if created and not os.listdir(model_dir):
            os.rmdir(model_dir)  # ours and still empty: a failed first request leaves nothing
        raise
    return model_dir


def _fetch_all(model_dir, release, url, timeout, progress, verify) -> None:
    unchecked = []
    for fname in FILES:
        dest, file_url = os.path.join(model_dir, fname), f"{base_url(url)}/{release}/{fname}"
        remote = Remote.of(file_url, timeout)
        checked = remote.md5 is not None or (remote.size is not None and not verify)
        if os.path.exists(dest):
            wrong = remote.mismatch(dest, checksum=verify)
            if wrong is None:
                if not checked:
                    unchecked.append(dest)
                continue
            print(f"{dest}: {wrong}; fetching it again", file=sys.stderr)
            if os.path.exists(dest + ".part"):
                os.remove(dest + ".part")  # from scratch; `dest` is replaced once the new is whole
        if not fetch_file(file_url, dest, timeout, progress, remote) or (verify and not checked):
            unchecked.append(dest)
    what = "no MD5" if verify else "neither its size nor its MD5"
    for dest in unchecked:
        print(f"{dest}: not checked: the server sent {what}", file=sys.stderr)
    if verify and unchecked:
        raise UserError(
            f"{len(unchecked)} of {len(FILES)} files could not be verified: the server sends no "
            f"MD5 for them (they are kept, unproven); verify against a server that does"
        )
