"""`gpt2_tf2 serve` as a command: its flags' checks (in process: the command's logic), and as a
process (the subject here: it listens, loads, answers, and on SIGTERM stops accepting, lets a
running stream end or cuts it at --shutdown_timeout, and exits 0; a port in use or a model that
fails to load is one line and a non-zero exit, no traceback)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from conftest import REPO, cli_env, run_in_process


def test_help_lists_every_flag():
    from gpt2_tf2.cli.serve import ServeFlags

    out = run_in_process(["-m", "gpt2_tf2.serve", "--help"])
    assert out.returncode == 0
    for name in ServeFlags.__dataclass_fields__:
        assert f"--{name}" in out.stdout, name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "error: --port must be an integer from 0 to 65535, got 70000"),
        (["--slots", "0"], "error: --slots must be an integer >= 1, got 0"),
        (["--max_queue", "-1"], "error: --max_queue must be an integer >= 0, got -1"),
        (["--chat_template", "/nonexistent.json"], "cannot read the chat template"),
        (["--port", "1", "--slot", "2"], "unknown flag --slot; did you mean --slots?"),
    ],
)
def test_bad_flags_are_one_line(args, message):
    out = run_in_process(["-m", "gpt2_tf2.serve", *args])
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_bad_chat_template_says_what_is_wrong(tmp_path):
    path = tmp_path / "template.json"
    path.write_text('{"user": "no placeholder"}')
    out = run_in_process(["-m", "gpt2_tf2.serve", "--chat_template", str(path)])
    assert out.returncode == 2 and "'user' must be a string with {content} in it" in out.stderr


def start(model_dir, *args):
    """The server as a process on a free port; returns (process, base url) once it listens."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2_tf2.serve",
            "--model_name",
            model_dir,
            "--port",
            "0",
            "--offline",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=cli_env(),
    )
    line = process.stderr.readline()  # printed once the port is bound
    match = re.search(r"serving at (http://127\.0\.0\.1:\d+)/", line)
    assert match, line + process.stderr.read()
    return process, match.group(1)


def wait_ready(url, process, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("not ready: " + process.stderr.read())


@pytest.mark.e2e
def test_sigterm_mid_stream_ends_the_stream_and_exits_0(tiny_model_dir):
    process, url = start(tiny_model_dir, "--slots", "1", "--shutdown_timeout", "2")
    try:
        wait_ready(url, process)
        # One stream long enough to outlast the shutdown bound: 16 choices of 60 tokens.
        body = {"prompt": "Hi", "max_tokens": 60, "min_tokens": 60, "n": 16, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            start_time = time.monotonic()
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        # The stream was cut at the bound and ended properly: every choice finished, [DONE].
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in rest[:-1]]
        finished = {c["index"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]}
        assert finished == set(range(16))
        assert len(chunks) < 16 * 60
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - start_time < 20
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(url + "/health", timeout=2)
        err = process.stderr.read()
        assert "Traceback" not in err, err
    finally:
        process.kill()
        process.wait()


@pytest.mark.e2e
def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "gpt2_tf2.serve", "--port", str(port), "--offline"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=cli_env(),
            timeout=120,
        )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "choose another --port or --host"
    )


@pytest.mark.e2e
def test_a_model_that_fails_to_load_stops_the_server(tmp_path):
    process, url = start(str(tmp_path / "no-such-model"))
    try:
        assert process.wait(timeout=120) == 2
        err = process.stderr.read()
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    finally:
        process.kill()
        process.wait()


@pytest.mark.e2e
def test_sigterm_when_idle_exits_0(tiny_model_dir):
    process, url = start(tiny_model_dir)
    try:
        wait_ready(url, process)
        reply = httpx.post(
            url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=120
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()
