"""The downloader against a local HTTP server on 127.0.0.1 serving a generated release."""

import base64
import filecmp
import hashlib
import http.server
import os
import re
import shutil
import threading
import time

import pytest

from conftest import run_cli, run_in_process
from gpt2_tf2.errors import UserError
from gpt2_tf2.formats.download import FILES, download_model

DATA = "model.ckpt.data-00000-of-00001"


class Release(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        # file name -> "cut" | "stall" | "short" | "404" | "no-length", used once
        self.faults = {}
        self.requests = []  # (path, Range header) of each GET
        self.heads = []  # path of each HEAD
        self.md5 = True  # send Content-MD5, as Azure blob storage does
        self.head = True  # answer HEAD (else 405: nothing is known before the GET)
        self.always = None  # a fault for every GET

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.server.heads.append(self.path)
        if not self.server.head:
            self.send_error(405)
            return
        path = os.path.join(self.server.root, self.path.rsplit("/", 1)[-1])
        if not self.path.startswith("/124M/") or not os.path.exists(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        if self.server.md5:
            self.send_header("Content-MD5", base64.b64encode(hashlib.md5(data).digest()).decode())
        self.end_headers()

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        name = self.path.rsplit("/", 1)[-1]
        path = os.path.join(server.root, name)
        fault = server.faults.pop(name, None) or server.always
        if fault == "404" or not self.path.startswith("/124M/") or not os.path.exists(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if fault == "chunked-cut":  # one chunk of half the body, then no last chunk: a cut
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if fault != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "no-length":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if fault in ("cut", "short"):
            self.wfile.write(body[: len(body) // 2])  # then close: the client sees a short body
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "stall":
            self.wfile.write(body[:1000])
            self.wfile.flush()
            time.sleep(3)  # longer than the client's timeout; bounded so the thread ends
            return
        self.wfile.write(body)


@pytest.fixture()
def server(tiny_model_dir):
    srv = Release(tiny_model_dir)
    # serve_forever polls for shutdown every 0.5 s by default: 0.5 s at the end of every test
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def same_as_release(model_dir, release_dir):
    return all(
        filecmp.cmp(os.path.join(model_dir, f), os.path.join(release_dir, f), shallow=False)
        for f in FILES
    )


def test_full_download_then_skip(server, tiny_model_dir, tmp_path):
    model_dir = download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert sorted(os.listdir(model_dir)) == sorted(FILES)
    assert same_as_release(model_dir, tiny_model_dir)
    count = len(server.requests)
    assert count == len(FILES)
    download_model("117M", str(tmp_path), url=server.url, progress=False)  # alias, same release
    assert len(server.requests) == count  # complete files are skipped: a HEAD each, no GET
    assert len(server.heads) == 2 * len(FILES)


def test_a_short_body_without_length_is_not_kept(server, tiny_model_dir, tmp_path):
    """Without Content-Length the size from the HEAD request tells a cut body."""
    server.faults[DATA] = "no-length"
    with pytest.raises(UserError, match=r"got \d+ of \d+ bytes"):
        download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert not (tmp_path / "124M" / DATA).exists()
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert same_as_release(str(tmp_path / "124M"), tiny_model_dir)


def test_wrong_files_are_caught_and_fetched_again(server, tiny_model_dir, tmp_path):
    """A garbage .part prefix fails the MD5; a file of the wrong size already there is fetched
    again; --verify re-checks the MD5 of files that are there."""
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    (model_dir / (DATA + ".part")).write_bytes(b"\xff" * 100)  # not a prefix of the real file
    with pytest.raises(UserError, match="MD5 is not the server's"):
        download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert not (model_dir / DATA).exists() and not (model_dir / (DATA + ".part")).exists()
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert same_as_release(str(model_dir), tiny_model_dir)
    (model_dir / "vocab.bpe").write_text("short")
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert same_as_release(str(model_dir), tiny_model_dir)
    data = bytearray((model_dir / DATA).read_bytes())
    data[10] ^= 0xFF  # same size, other bytes: only the MD5 tells
    (model_dir / DATA).write_bytes(bytes(data))
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert not same_as_release(str(model_dir), tiny_model_dir)  # size alone: kept
    download_model("124M", str(tmp_path), url=server.url, progress=False, verify=True)
    assert same_as_release(str(model_dir), tiny_model_dir)


def test_resume_after_cut(server, tiny_model_dir, tmp_path):
    server.faults[DATA] = "cut"
    with pytest.raises(UserError, match=r"(got \d+ of \d+ bytes|connection lost).*resume"):
        download_model("124M", str(tmp_path), url=server.url, progress=False, timeout=5)
    dest = tmp_path / "124M" / DATA
    assert not dest.exists()  # nothing that looks complete
    partial = (tmp_path / "124M" / (DATA + ".part")).stat().st_size
    assert 0 < partial < os.path.getsize(os.path.join(tiny_model_dir, DATA))
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert (f"/124M/{DATA}", f"bytes={partial}-") in server.requests
    assert same_as_release(str(tmp_path / "124M"), tiny_model_dir)
    assert not (tmp_path / "124M" / (DATA + ".part")).exists()


def test_a_server_that_proves_nothing_is_said_to(server, tiny_model_dir, tmp_path, capsys):
    """No HEAD, no Content-Length, no MD5, every body cut to half: HTTP cannot tell; each file
    is said to be unchecked, and --verify fails (it passed silently)."""
    server.head, server.md5, server.always = False, False, "no-length"
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    err = capsys.readouterr().err
    assert err.count("not checked: the server sent neither its size nor its MD5") == len(FILES)
    with pytest.raises(UserError, match=f"{len(FILES)} of {len(FILES)} files could not be verif"):
        download_model("124M", str(tmp_path), url=server.url, progress=False, verify=True)
    server.head, server.always = True, None  # sizes known, still no MD5: --verify cannot prove
    with pytest.raises(UserError, match="could not be verified: the server sends no MD5"):
        download_model("124M", str(tmp_path), url=server.url, progress=False, verify=True)
    assert same_as_release(str(tmp_path / "124M"), tiny_model_dir)  # fetched again by size


def test_a_chunked_body_without_its_last_chunk_is_a_cut(server, tiny_model_dir, tmp_path):
    server.head, server.faults[DATA] = False, "chunked-cut"
    with pytest.raises(UserError, match="connection lost.*resume"):
        download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert not (tmp_path / "124M" / DATA).exists()
    assert (tmp_path / "124M" / (DATA + ".part")).exists()
    server.head = True
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert same_as_release(str(tmp_path / "124M"), tiny_model_dir)


def test_a_part_is_not_resumed_without_an_md5_to_prove_it(server, tiny_model_dir, tmp_path):
    server.md5 = False
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / (DATA + ".part")).write_bytes(b"\xff" * 100)  # garbage, not a prefix
    download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert same_as_release(str(tmp_path / "124M"), tiny_model_dir)
    assert all(r is None for _, r in server.requests)  # no Range: fetched whole


def test_short_file_is_not_kept(server, tmp_path):
    server.faults["encoder.json"] = "short"
    with pytest.raises(UserError):
        download_model("124M", str(tmp_path), url=server.url, progress=False, timeout=5)
    assert not (tmp_path / "124M" / "encoder.json").exists()


def test_404(server, tmp_path):
    server.faults["vocab.bpe"] = "404"
    with pytest.raises(UserError, match="HTTP 404"):
        download_model("124M", str(tmp_path), url=server.url, progress=False)
    assert not (tmp_path / "124M" / "vocab.bpe").exists()


def test_stalled_server_times_out(server, tmp_path):
    server.faults[DATA] = "stall"
    started = time.monotonic()
    with pytest.raises(UserError, match="stopped sending"):
        download_model("124M", str(tmp_path), url=server.url, progress=False, timeout=1)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "124M" / DATA).exists()


def test_unknown_release(tmp_path):
    with pytest.raises(UserError, match="unknown release"):
        download_model("42M", str(tmp_path), url="http://127.0.0.1:9", progress=False)


def test_cli_download_and_sample(server, tmp_path):
    r = run_in_process(
        ["-m", "gpt2_tf2.download", "124M", "--models_dir", str(tmp_path), "--base_url", server.url]
    )
    assert r.returncode == 0, r.stderr
    r = run_in_process(
        ["-m", "gpt2_tf2.sample", "--models_dir", str(tmp_path), "--length", "3", "--offline"]
    )
    assert r.returncode == 0, r.stderr
    assert "SAMPLE 1" in r.stdout


@pytest.mark.e2e
def test_tools_download_model(server, tmp_path):
    r = run_cli(
        [
            os.path.join("tools", "download_model.py"),
            "124M",
            "--models_dir",
            str(tmp_path),
            "--base_url",
            server.url,
        ]
    )
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "124M")) == sorted(FILES)


def test_sample_downloads_missing_release(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_TF2_BASE_URL", server.url)
    r = run_in_process(["-m", "gpt2_tf2.sample", "--models_dir", str(tmp_path), "--length", "3"])
    assert r.returncode == 0, r.stderr
    assert "downloading it" in r.stderr and "SAMPLE 1" in r.stdout


def test_an_unreachable_mirror_names_what_each_command_takes(tmp_path, monkeypatch):
    """The library's message names its `base_url`; `download` says --base_url, its flag; `sample`
    (which downloads a missing release itself, and has no such flag) names the environment
    variable and no flag it would refuse."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UserError, match=r"\(`base_url`, or GPT2_TF2_BASE_URL in the environment\)"):
        download_model("124M", str(tmp_path), url=url, progress=False, timeout=5)
    cmd = ["-m", "gpt2_tf2.download", "124M", "--models_dir", str(tmp_path), "--base_url", url]
    r = run_in_process(cmd)
    assert r.returncode == 2 and "(--base_url, or GPT2_TF2_BASE_URL" in r.stderr, r.stderr
    monkeypatch.setenv("GPT2_TF2_BASE_URL", url)
    r = run_in_process(["-m", "gpt2_tf2.sample", "--models_dir", str(tmp_path), "--length", "3"])
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and line.startswith("error: ") and "cannot connect" in line, r.stderr
    assert "GPT2_TF2_BASE_URL in the environment" in line and "--base_url" not in line


def test_cli_http_error_is_one_line(server, tmp_path):
    server.faults["checkpoint"] = "404"
    r = run_in_process(
        ["-m", "gpt2_tf2.download", "124M", "--models_dir", str(tmp_path), "--base_url", server.url]
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in r.stderr


def test_full_disk(server, tmp_path, monkeypatch):
    """ENOSPC while writing: one clear error, and no file under its final name."""
    import errno
    import io

    from gpt2_tf2.formats import download

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "open", lambda *a, **k: FullDisk(), raising=False)
    with pytest.raises(UserError, match="disk full; free space and run the command again"):
        download_model("124M", str(tmp_path), url=server.url, progress=False)
    release = tmp_path / "124M"  # removed when nothing was written into it
    assert not any(f in FILES for f in (os.listdir(release) if release.exists() else []))


def test_sample_completes_an_interrupted_download(server, tmp_path, monkeypatch):
    """An offline first attempt leaves an empty models/124M; the next run must download into it."""
    (tmp_path / "124M").mkdir()
    monkeypatch.setenv("GPT2_TF2_BASE_URL", server.url)
    r = run_in_process(["-m", "gpt2_tf2.sample", "--models_dir", str(tmp_path), "--length", "3"])
    assert r.returncode == 0, r.stderr
    assert "downloading it" in r.stderr and "SAMPLE 1" in r.stdout
    assert sorted(os.listdir(tmp_path / "124M")) == sorted(FILES)


def test_a_release_lacking_its_meta_graph_fetches_just_that(
    server, tiny_model_dir, tmp_path, monkeypatch
):
    shutil.copytree(tiny_model_dir, tmp_path / "124M")
    os.remove(tmp_path / "124M" / "model.ckpt.meta")
    monkeypatch.setenv("GPT2_TF2_BASE_URL", server.url)
    r = run_in_process(["-m", "gpt2_tf2.sample", "--models_dir", str(tmp_path), "--length", "2"])
    assert r.returncode == 0, r.stderr
    assert "lacks model.ckpt.meta: fetching" in r.stderr and "downloading it" not in r.stderr
    assert [p for p, _ in server.requests] == ["/124M/model.ckpt.meta"]


def test_a_server_that_never_answers(tmp_path):
    """It accepts the connection and says nothing: 'no answer', not 'cannot connect'."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(UserError, match=r"no answer in 1 s"):
            download_model("124M", str(tmp_path), url=url, progress=False, timeout=1)
    finally:
        listener.close()


def test_a_failed_first_request_leaves_no_directory(tmp_path):
    """Nothing fetched: the release directory it made is gone again; one that was there stays."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UserError, match="cannot connect"):
        download_model("124M", str(tmp_path), url=url, progress=False, timeout=5)
    assert not (tmp_path / "124M").exists()
    (tmp_path / "124M").mkdir()  # the user's (empty) directory
    with pytest.raises(UserError, match="cannot connect"):
        download_model("124M", str(tmp_path), url=url, progress=False, timeout=5)
    assert (tmp_path / "124M").is_dir()
