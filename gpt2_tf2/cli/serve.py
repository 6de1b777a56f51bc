"""`gpt2_tf2 serve`: an OpenAI-compatible HTTP server over one model, with continuous batching
(`gpt2_tf2.server`), on uvicorn. Needs the extra `[serve]` (starlette, uvicorn).

The command checks its flags and binds its port before anything loads (a port in use is one
line), starts listening (`/health` answers 503 while the model loads), and on SIGTERM or Ctrl-C
stops accepting, lets running requests finish for up to --shutdown_timeout seconds, cancels
the rest and exits 0.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import socket
import sys
import threading

from gpt2_tf2.cli import flags, runner
from gpt2_tf2.errors import UserError

KEY_VARIABLE = "GPT2_TF2_API_KEY"


flag = runner.flag


@dataclasses.dataclass(frozen=True)
class ServeFlags(runner.ModelFlags):
    """The server's flags: the model (`runner.ModelFlags`), where it listens, its slots and
    queue, and who may call it."""

    host: str = flag(
        "127.0.0.1",
        "address to listen on; 127.0.0.1 is this machine only. 0.0.0.0 listens on every "
        "interface (in Docker, with -p 8000:8000): set --api_key then.",
    )
    port: int = flag(8000, "port to listen on; 0 picks a free one (printed at start).")
    slots: int = flag(
        4,
        "sequences generated at once (the engine's batch); more requests wait in the queue and "
        "join as slots free. A step runs the slots up to the last busy one (new sequences take "
        "the lowest free slots), so a light load costs what it uses; the cache is held for all "
        "of them (docs/benchmarks/serving.md).",
    )
    max_queue: int = flag(
        64, "sequences that may wait for a slot; beyond it requests get 429 with Retry-After."
    )
    api_key: str | None = flag(
        None,
        f"require 'Authorization: Bearer KEY' on every /v1 request (else 401). Default: the "
        f"{KEY_VARIABLE} environment variable, if set; else no key.",
    )
    allow_origin: str | None = flag(
        None,
        "origins (comma-separated, or '*') whose web pages may call the API (CORS); default: "
        "none but the server's own playground.",
    )
    chat_template: str | None = flag(
        None,
        "JSON file that changes how /v1/chat/completions writes messages as a prompt "
        "(docs/serving.md); default 'User: ...' / 'Assistant: ...' lines.",
    )
    served_name: str | None = flag(
        None,
        "the model's id in /v1/models and replies; default: run_name, or model_name's last "
        "part. A request that names another model gets 404; one without a model gets this one.",
    )
    shutdown_timeout: float = flag(
        10.0, "on SIGTERM, seconds running requests may take to finish before they are cut."
    )
    verbose: bool = flag(False, "show TensorFlow's and uvicorn's log messages.")


def serve(*args, **kwargs):
    bound = serve.__signature__.bind(*args, **kwargs)
    bound.apply_defaults()
    opts = ServeFlags(**bound.arguments)
    check_flags(opts)
    template = _template(opts.chat_template)
    for package in ("starlette", "uvicorn"):
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"serve needs the [serve] extra ({package} is missing): "
                f"pip install 'gpt2_tf2[serve]'"
            )
    sock = _bind(opts.host, opts.port)  # before loading: a port in use is said at once
    runner.configure_logging(opts.verbose, xla=True)  # from here on, TensorFlow is imported
    from gpt2_tf2.server.app import Options, make_app

    api_key = opts.api_key if opts.api_key is not None else os.environ.get(KEY_VARIABLE) or None
    name = opts.served_name or opts.run_name or os.path.basename(opts.model_name.rstrip("/\\"))
    options = Options(
        model_name=name,
        slots=opts.slots,
        max_queue=opts.max_queue,
        api_key=api_key,
        allow_origin=opts.allow_origin,
        chat_template=template,
    )
    failed = []

    def load():
        lm = runner.load_chosen(opts, opts.verbose)
        runner.say(f"ready: {name}, {opts.slots} slots")
        return lm

    def on_failure(message):
        failed.append(message)
        server.should_exit = True

    app = make_app(load, options, on_failure)
    server = _server(app, opts)
    host, port = sock.getsockname()[:2]
    runner.say(f"serving at http://{_url_host(host)}:{port}/ (OpenAI API at /v1; loading...)")
    server.run(sockets=[sock])
    if failed:
        raise UserError(failed[0])


def check_flags(opts: ServeFlags) -> None:
    """The flags' own checks, before anything loads."""
    if not isinstance(opts.port, int) or isinstance(opts.port, bool) or not 0 <= opts.port < 65536:
        raise UserError(f"`port` must be an integer from 0 to 65535, got {opts.port!r}")
    for name in ("slots", "max_queue"):
        value = getattr(opts, name)
        low = 1 if name == "slots" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"`{name}` must be an integer >= {low}, got {value!r}")
    if not isinstance(opts.shutdown_timeout, (int, float)) or opts.shutdown_timeout < 0:
        raise UserError(f"`shutdown_timeout` must be >= 0 seconds, got {opts.shutdown_timeout!r}")
    if opts.api_key is not None and not str(opts.api_key).strip():
        raise UserError("`api_key` is empty; give a key, or leave the flag out")


def _template(path):
    from gpt2_tf2.server.chat import load_template

    return load_template(path)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}); choose another `port` or `host`"
        ) from None
    sock.set_inheritable(True)
    return sock


def _server(app, opts: ServeFlags):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:  # running requests get shutdown_timeout, then end cut
                cut = threading.Timer(opts.shutdown_timeout, app.state.server.stop)
                cut.daemon = True
                cut.start()
            super().handle_exit(sig, frame)
            # uvicorn raises a captured signal again after its graceful shutdown (the process
            # then dies of it); a SIGTERM that stopped us gracefully is a normal exit, 0.
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)

    config = uvicorn.Config(
        app,
        log_level="info" if opts.verbose else "warning",
        access_log=opts.verbose,
        # Requests cut at shutdown_timeout end their replies themselves; this is the backstop.
        timeout_graceful_shutdown=opts.shutdown_timeout + 10,
        lifespan="on",
    )
    return Server(config)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


serve.__signature__, serve.__doc__ = flags.command_signature(
    "Serve a model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions,\n"
    "/v1/models), /health, /metrics and a playground page at /. Requests share the model\n"
    "through continuous batching: each joins a free slot between steps. docs/serving.md\n"
    "shows curl, the openai client and LangChain against it.",
    flags.config_fields(ServeFlags),
)
serve.uses_xla = True
serve.configures_logging = True
serve.positional = ()


def main(argv=None):
    runner.run(serve, argv, name="gpt2_tf2 serve")


if __name__ == "__main__":
    main(sys.argv[1:])
