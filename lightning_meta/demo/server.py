"""`python demo.py ckpt_path=... [host=127.0.0.1] [port=8000] [dotted.key=value ...]`: the interactive few-shot
demo, a local web page served by the standard library's `http.server`.

Draw one example of each of 2 to `ways` new classes, draw a test character, press Classify: the server adapts the
checkpoint's meta-weights to the drawn classes (`learner.adapt`) and shows the class probabilities. The page and
any script talk to the same JSON API (`lightning_meta/demo/fewshot.py`, docs/evaluation.md "Interactive demo").
Overrides use eval.py's grammar and checks, e.g. `algorithm.eval_inner.steps=10`. With no ckpt_path, the checkpoint
shipped beside this file is used.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

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
MAX_BODY = 8 * 2**20  # bytes of one request: 101 image drawings of a 20-way checkpoint fit, with room to spare
MAX_DEPTH = 32  # brackets deep in a request; a valid one is 7 deep (object, classes, class, drawing, strokes, point)
READ_TIMEOUT = 5.0  # seconds a connection may stay silent while it sends its request (a body shorter than promised)
ALLOWED = {"/api/info": "GET", "/api/classify": "POST", **{page: "GET" for page in PAGES}}
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # JSON strings, whose brackets do not nest
_BRACKETS = np.zeros(256, dtype=np.int8)
_BRACKETS[list(b"[{")], _BRACKETS[list(b"]}")] = 1, -1


class RequestError(Exception):
    """A request the server refuses before the demo sees it: its HTTP status and the message naming the fix."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of brackets in a JSON text, brackets inside strings not counted (numpy: fast on 8 MiB)."""
    outside = _STRINGS.sub(b"", body)
    if not outside:
        return 0
    return int(np.cumsum(_BRACKETS[np.frombuffer(outside, dtype=np.uint8)], dtype=np.int64).max(initial=0))


def parse_body(body: bytes):
    """The JSON value of a request body; `RequestError` (400) for one that is not JSON or nests too deep."""
    depth = nesting_depth(body)
    if depth > MAX_DEPTH:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body nests {depth} brackets deep; a request nests at most "
                                                   f"{MAX_DEPTH} (a valid one: 7)")  # fmt: skip
    try:
        return json.loads(body.decode("utf-8") if body else "null", parse_constant=_not_json)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, an int of > 4300 digits
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({_short(str(error), 200)})") from None


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON number; send finite numbers")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class DemoHandler(BaseHTTPRequestHandler):
    """Routes: the page's three files, `GET /api/info`, `POST /api/classify`; every error answers JSON
    `{"error": ...}` (a 4xx naming the fix, 500 for a bug of the demo), and the server stays up.

    One request per connection (HTTP/1.0). A connection silent for `server.read_timeout` seconds while it sends its
    request is answered 408 (or closed, before its request line) rather than holding a thread.
    """

    server: DemoServer
    default_request_version = "HTTP/1.0"  # errors of a garbled request line get a status line and headers too

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # StreamRequestHandler.setup applies it to the connection
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0]
        if ALLOWED.get(path, "GET") != "GET":
            self._not_allowed(path)
        elif path == "/api/info":
            self._send_json(self.server.demo.info())
        elif path in PAGES:
            name, kind = PAGES[path]
            self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), f"{kind}; charset=utf-8")
        else:
            self._send_json({"error": f"no page {_short(path)}; open /"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path not in ALLOWED:
            self._send_json({"error": f"no endpoint {_short(path)}; POST to /api/classify"}, HTTPStatus.NOT_FOUND)
        elif ALLOWED[path] != "POST":
            self._not_allowed(path)
        else:
            try:
                self._send_json(self.server.demo.classify(parse_body(self._read_body())))
            except RequestError as error:
                self._send_json({"error": str(error)}, error.status)
            except DrawingError as error:
                self._send_json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
            except Exception as error:  # a bug of the demo: answer, log the traceback, keep serving
                self.server.handle_error(self.request, self.client_address)
                self._send_json({"error": f"internal error of the demo server ({type(error).__name__}); please "
                                          "report it"}, HTTPStatus.INTERNAL_SERVER_ERROR)  # fmt: skip

    def _read_body(self) -> bytes:
        """The body, `Content-Length` bytes of it, checked before reading; `RequestError` otherwise."""
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length header (no chunked "
                                                           "transfer encoding)")  # fmt: skip
        if len(set(lengths)) > 1 or not all(v.isascii() and v.isdigit() for v in lengths):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length: {_short(', '.join(lengths))} is not the "
                                                       "body's length in bytes (a non-negative integer)")  # fmt: skip
        length = int(lengths[0])
        if length > MAX_BODY:
            self.close_connection = True  # the body is left unread
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request of {length} bytes; send at most "
                                                                    f"{MAX_BODY}")  # fmt: skip
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the body stopped arriving for {self.timeout:g} s; send "
                                                           "all Content-Length bytes of it") from None  # fmt: skip
        if len(body) < length:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body has {len(body)} bytes, its Content-Length says "
                                                       f"{length}; send all of it")  # fmt: skip
        return body

    def _not_allowed(self, path: str) -> None:
        allowed = ALLOWED[path]
        self._send_json({"error": f"{self.command} {path} is not served; use {allowed} {path}"},
                        HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": allowed})  # fmt: skip

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a bad request line, too long a header, a method no route has) as JSON."""
        path = (getattr(self, "path", "") or "").split("?")[0]
        if code == HTTPStatus.NOT_IMPLEMENTED and path in ALLOWED:  # e.g. PUT /api/classify
            self._not_allowed(path)
            return
        if code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:  # a mistake of the client, as every request line error
            code, message = HTTPStatus.BAD_REQUEST, f"{message}; send HTTP/1.0 or HTTP/1.1"
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method of no route, on no route: 405 too, not a server fault
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"{_short(str(self.command))} is not served; GET / "
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        headers = {"Connection": "close"}
        if code == HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = "GET"
        self._send_json({"error": _short(message or status.phrase, 200)}, status, headers)

    def _send_json(self, value: dict, status: HTTPStatus = HTTPStatus.OK, headers: dict | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)


class DemoServer(ThreadingHTTPServer):
    """A threading HTTP server holding the `Demo` its handlers answer from.

    `server_close` (Ctrl-C) ends the reads of the connections still open, such as a browser's spare ones, and then
    joins their handler threads, so that none is still running while Python shuts down. An IPv6 host (`::1`) is
    served over IPv6.
    """

    daemon_threads = False  # ThreadingMixIn joins non-daemon handler threads in server_close

    def __init__(self, address: tuple[str, int], demo: Demo, verbose: bool = False,
                 read_timeout: float = READ_TIMEOUT) -> None:  # fmt: skip
        # set before binding: a failed bind calls server_close, which reads them
        self.demo, self.verbose, self.read_timeout = demo, verbose, read_timeout
        self._open: set[socket.socket] = set()  # connections accepted and not yet closed
        self._open_lock = threading.Lock()
        if ":" in str(address[0]):
            self.address_family = socket.AF_INET6
        super().__init__(address, DemoHandler)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that went away (reset, broken pipe, timed out) is no fault of the server: not logged."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

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


def make_server(demo: Demo, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False,
                read_timeout: float = READ_TIMEOUT) -> DemoServer:  # fmt: skip
    """The demo's server, bound but not yet serving (call `serve_forever`); port 0 picks a free port, a host with
    a colon (`::1`) is served over IPv6. OSError where the address cannot be bound."""
    return DemoServer((host, port), demo, verbose, read_timeout)


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
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    print(f"demo of {ckpt_path} ({demo.ways}-way): open http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    serve_until_interrupted(server)


def main(argv: Sequence[str] | None = None) -> int:
    """`python demo.py [--help] [--cfg job] [ckpt_path=...] [host=...] [port=...] [key=value ...]`."""
    return cli.saved_run_main(argv, "demo", DEMO_KEYS, USAGE, serve)
