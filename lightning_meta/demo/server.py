"""`python demo.py ckpt_path=... [host=127.0.0.1] [port=8000] [dotted.key=value ...]`: the interactive few-shot
demo, a local web page served by the standard library's `http.server`.

Draw one example of each of 2 to `ways` new classes, draw a test character, press Classify: the server adapts the
checkpoint's meta-weights to the drawn classes (`learner.adapt`) and shows the class probabilities. The page and
any script talk to the same JSON API (`lightning_meta/demo/fewshot.py`, README "Interactive demo"). Overrides use
eval.py's grammar and checks, e.g. `algorithm.eval_inner.steps=10`. With no ckpt_path, the checkpoint shipped
beside this file is used.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lightning_meta import cli
from lightning_meta.demo.fewshot import Demo, load_demo
from lightning_meta.demo.render import DrawingError
from lightning_meta.errors import CheckpointError, ConfigError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "omniglot_5way.ckpt"
STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("index.html", "text/html"), "/demo.js": ("demo.js", "text/javascript"),
         "/demo.css": ("demo.css", "text/css")}  # fmt: skip
# demo.py's own keys and their defaults, beside the overrides of the checkpoint's saved config.
DEMO_KEYS = {"ckpt_path": str(DEFAULT_CHECKPOINT), "host": "127.0.0.1", "port": 8000}
USAGE = """usage: python demo.py [ckpt_path=<run>/checkpoints/<name>.ckpt] [host=127.0.0.1] [port=8000] [--cfg job]
                   [dotted.key=value ...]

  ckpt_path        a train.py checkpoint of greyscale image classification (default: the one shipped with the demo)
  host, port       where to serve the page (port=0: any free port)
  dotted.key=value any key of the checkpoint's saved config, e.g. algorithm.eval_inner.steps=10
  --cfg job        print the checkpoint's config with the overrides and these keys, and exit"""
MAX_BODY = 8 * 2**20  # bytes of one request


class DemoHandler(BaseHTTPRequestHandler):
    """Routes: the page's three files, `GET /api/info`, `POST /api/classify`; errors answer `{"error": ...}`."""

    server: DemoServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0]
        if path == "/api/info":
            self._send_json(self.server.demo.info())
        elif path in PAGES:
            name, kind = PAGES[path]
            self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), f"{kind}; charset=utf-8")
        else:
            self._send_json({"error": f"no page {path}; open /"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/api/classify":
            self._send_json({"error": f"no endpoint {self.path}; POST to /api/classify"}, HTTPStatus.NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send_json({"error": f"request of {length} bytes; send at most {MAX_BODY}"}, HTTPStatus.BAD_REQUEST)
            return
        try:
            request = json.loads(self.rfile.read(length) or b"null")
            self._send_json(self.server.demo.classify(request))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self._send_json({"error": f"the body is not JSON ({error})"}, HTTPStatus.BAD_REQUEST)
        except DrawingError as error:
            self._send_json({"error": str(error)}, HTTPStatus.BAD_REQUEST)

    def _send_json(self, value: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)


class DemoServer(ThreadingHTTPServer):
    """A threading HTTP server holding the `Demo` its handlers answer from.

    `server_close` (Ctrl-C) ends the reads of the connections still open, such as a browser's spare ones, and then
    joins their handler threads, so that none is still running while Python shuts down.
    """

    daemon_threads = False  # ThreadingMixIn joins non-daemon handler threads in server_close

    def __init__(self, address: tuple[str, int], demo: Demo, verbose: bool = False) -> None:
        super().__init__(address, DemoHandler)
        self.demo, self.verbose = demo, verbose
        self._open: set[socket.socket] = set()  # connections accepted and not yet closed
        self._open_lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._open_lock:
            still_open = list(self._open)
        for connection in still_open:
            try:
                connection.shutdown(socket.SHUT_RD)  # a handler waiting for a request reads end of file and returns
            except OSError:  # closed by its handler meanwhile
                pass
        super().server_close()


def serve_until_interrupted(server: DemoServer, poll: float = 0.1) -> None:
    """Serve from a worker thread until Ctrl-C or SIGTERM, then stop serving, end open connections, join every thread.

    While serving, SIGINT and SIGTERM only set a flag that the main thread polls, so no KeyboardInterrupt can land
    inside socketserver: one that landed while it started a handler thread made `server_close` fail in CI. A SIGINT
    that is ignored (a shell's background job) stays ignored; a second Ctrl-C interrupts the closing. Call from the
    main thread, as signal handlers need.
    """
    stop: list[int] = []
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, lambda received, frame: stop.append(received))
    serving = threading.Thread(target=server.serve_forever, name="demo-serve")
    try:
        serving.start()
        while serving.is_alive() and not stop:
            serving.join(timeout=poll)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)  # a second Ctrl-C interrupts the closing below
        if serving.ident is not None:  # started
            server.shutdown()  # returns once serve_forever has ended, at once if it already has
            serving.join()
        server.server_close()


def make_server(demo: Demo, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False) -> DemoServer:
    """The demo's server, bound but not yet serving (call `serve_forever`); port 0 picks a free port."""
    return DemoServer((host, port), demo, verbose)


def serve(own: dict[str, Any], overrides: list[str]) -> None:
    """Load the demo of `own["ckpt_path"]` with `overrides` and serve it on `own["host"]:own["port"]` until
    Ctrl-C or SIGTERM."""
    port, ckpt_path = own["port"], str(own["ckpt_path"])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port={port} is not a port number; give e.g. port=8000 (0: any free port)")
    if not Path(ckpt_path).is_file() and ckpt_path == str(DEFAULT_CHECKPOINT):
        raise CheckpointError(
            f"no checkpoint given and none shipped at {DEFAULT_CHECKPOINT}; train one with "
            "python train.py experiment=demo_omniglot output_dir=outputs/demo, then "
            "python demo.py ckpt_path=outputs/demo/checkpoints/last.ckpt"
        )
    demo = load_demo(ckpt_path, overrides)
    try:
        server = make_server(demo, str(own["host"]), port, verbose=True)
    except OSError as error:  # the port is in use or privileged, or the host is not this machine's
        raise ConfigError(f"cannot serve on host={own['host']} port={port} ({error}); give another port "
                          "(port=0: any free port) or host") from error  # fmt: skip
    host, port = server.server_address[:2]
    print(f"demo of {ckpt_path} ({demo.ways}-way): open http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    serve_until_interrupted(server)


def main(argv: Sequence[str] | None = None) -> int:
    """`python demo.py [--help] [--cfg job] [ckpt_path=...] [host=...] [port=...] [key=value ...]`."""
    return cli.saved_run_main(argv, "demo", DEMO_KEYS, USAGE, serve)
