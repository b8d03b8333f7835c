"""Real Omniglot drawings as a canvas would send them, the shipped demo checkpoint and a running demo server.

The archives hold images, not pen trajectories, so a drawing becomes canvas strokes through its skeleton: the
105 x 105 image is thinned to one-pixel lines (Zhang & Suen, 1984), which are traced into polylines in the
coordinates of a 280 x 280 canvas. The demo then redraws them with its own pen.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lightning_meta.demo.fewshot import load_demo
from lightning_meta.demo.server import DEFAULT_CHECKPOINT, make_server

CANVAS = 280  # the page's canvas side, in pixels
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
    "--window-size=1000,900",
]  # fmt: skip
OPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # local servers: never through a proxy
_PNG = re.compile(r"images_(?:background|evaluation)/[^/]+/character\d+/(\d+)_(\d+)\.png$")


def ink_of(png: bytes) -> np.ndarray:
    """A 105 x 105 Omniglot PNG as a bool array, True where there is ink."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L")) < 128


def thin(ink: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel-wide skeleton of a bool image."""
    img = np.pad(ink, 1).astype(np.uint8)
    while True:
        changed = False
        for first in (True, False):
            p = img
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            neighbours = sum(n)  # P2..P9 clockwise from north
            transitions = sum((n[i] == 0) & (n[(i + 1) % 8] == 1) for i in range(8))
            if first:
                side = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                side = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            remove = (p[1:-1, 1:-1] == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & side
            if remove.any():
                img[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def skeleton_strokes(ink: np.ndarray, canvas: float = CANVAS) -> list[list[list[float]]]:
    """Canvas strokes tracing a drawing's skeleton, as a pen would: walk from pixel to unvisited 8-neighbouring
    pixel while one is left, then start a new stroke, at an end of a line where there is one, beginning at an
    already drawn neighbour so that the strokes join. Points are pixel centres scaled to a `canvas`-wide square."""
    skeleton = thin(ink)
    rows, cols = skeleton.shape
    around = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]  # straight moves first
    near = lambda r, c: [(r + dr, c + dc) for dr, dc in around if 0 <= r + dr < rows and 0 <= c + dc < cols
                         and skeleton[r + dr, c + dc]]  # fmt: skip
    pixels = list(zip(*np.nonzero(skeleton), strict=True))
    ends = [p for p in pixels if len(near(*p)) == 1]
    visited: set[tuple[int, int]] = set()
    scale = canvas / rows
    at = lambda r, c: [round((c + 0.5) * scale, 2), round((r + 0.5) * scale, 2)]
    strokes = []
    for start in ends + pixels:
        if start in visited:
            continue
        drawn = [p for p in near(*start) if p in visited]
        stroke, here = [at(*drawn[0])] if drawn else [], start
        while here is not None:
            visited.add(here)
            stroke.append(at(*here))
            here = next((p for p in near(*here) if p not in visited), None)
        strokes.append(stroke)
    return strokes


def read_originals(folder: Path, characters: set[int]) -> dict[int, list[np.ndarray]]:
    """The 105 x 105 drawings of the given character ids (0-based, as `decode_omniglot` numbers them), by drawer."""
    found: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in characters}
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(folder / f"{name}.zip") as archive:
            for member in archive.namelist():
                match = _PNG.search(member)
                if match and int(match.group(1)) - 1 in found:
                    found[int(match.group(1)) - 1].append((int(match.group(2)), ink_of(archive.read(member))))
    return {c: [ink for _, ink in sorted(drawings, key=lambda d: d[0])] for c, drawings in found.items()}


@pytest.fixture(scope="session")
def demo():
    """The shipped checkpoint, loaded as `demo.py` loads it (its `Demo` object)."""
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"no demo checkpoint at {DEFAULT_CHECKPOINT}")
    return load_demo(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="session")
def demo_url(demo):
    """The demo served on a free local port for the session; its base URL."""
    server = make_server(demo, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def call(url: str, body=None) -> tuple[int, dict]:
    """(status, JSON answer) of GET `url`, or of POST `body` (a dict, or raw bytes) to it."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with OPEN(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def fetch(url: str) -> tuple[str, str]:
    """(Content-Type, text) of a page."""
    with OPEN(url, timeout=30) as response:
        return response.headers["Content-Type"], response.read().decode()


def raw(address: tuple, data: bytes, close_write: bool = True, timeout: float = 30) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of the bytes `data` sent as they are to a server at `address`;
    `close_write` ends the sending side after them (the server reads end of file, not a silence)."""
    with socket.create_connection(address[:2], timeout=timeout) as connection:
        try:
            connection.sendall(data)
            if close_write:
                connection.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # the server answered before reading all of it (a body it refuses unread)
            pass
        answer = connection.makefile("rb").read()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def post(address: tuple, body: bytes, path: str = "/api/classify", **kwargs) -> tuple[int, dict, bytes]:
    """`raw` of an HTTP/1.0 POST of `body` with its true Content-Length."""
    head = f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return raw(address, head.encode() + body, **kwargs)


@pytest.fixture(scope="session")
def client() -> SimpleNamespace:
    """HTTP helpers for the demo server: `call` for the JSON API, `fetch` for pages, `raw` and `post` for bytes
    sent as they are."""
    return SimpleNamespace(call=call, fetch=fetch, raw=raw, post=post)


@pytest.fixture(scope="module")
def quick_server(demo):
    """The demo served on a free local port for a module, with a read timeout of 1 s (5 s in `demo.py`) so that
    requests that stop sending are answered soon; the `DemoServer`."""
    server = make_server(demo, "127.0.0.1", 0, read_timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def drawings() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(ink_of=ink_of, thin=thin, strokes=skeleton_strokes, originals=read_originals)


class Browser:
    """Headless Chromium driven through the DevTools protocol (one page, commands answered in order)."""

    def __init__(self, profile: Path) -> None:
        import websocket  # the `test` extra's websocket-client

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"{CHROMIUM} did not start (exit status {self.process.poll()})")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        targets = json.loads(OPEN(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.last_id = 0

    def send(self, method: str, **params) -> dict:
        """One protocol command; its result (events arriving in between are dropped)."""
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        """Poll until `expression` is true (an exception counts as false: the page may still be loading)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(expression):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never had {expression}")
            time.sleep(0.05)

    def origin(self, selector: str) -> tuple[int, int]:
        """Viewport position of the top-left pixel inside the border of the element `selector` names."""
        box = self.evaluate(f"(e => {{ const b = e.getBoundingClientRect(); return [b.left + e.clientLeft, "
                            f"b.top + e.clientTop]; }})(document.querySelector({json.dumps(selector)}))")  # fmt: skip
        return round(box[0]), round(box[1])

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons, clickCount=1)

    def draw(self, selector: str, strokes: list[list[list[int]]]) -> None:
        """Draw strokes (canvas pixels) on the canvas `selector` names: press, move through the points, release."""
        left, top = self.origin(selector)
        for stroke in strokes:
            self.mouse("mousePressed", left + stroke[0][0], top + stroke[0][1], 1)
            for x, y in stroke[1:]:
                self.mouse("mouseMoved", left + x, top + y, 1)
            self.mouse("mouseReleased", left + stroke[-1][0], top + stroke[-1][1])

    def click(self, selector: str) -> None:
        left, top = self.origin(selector)
        self.mouse("mousePressed", left + 3, top + 3, 1)
        self.mouse("mouseReleased", left + 3, top + 3)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium page (skipped without the `chromium` package or websocket-client)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    pytest.importorskip("websocket", reason="pip install -e '.[test]' for websocket-client")
    browser = Browser(tmp_path / "profile")
    yield browser
    browser.close()
