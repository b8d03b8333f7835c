"""A load test of the demo server: 8 concurrent clients send 10 requests each, well-formed and malformed mixed;
every one is answered (2xx for the valid, 4xx JSON for the malformed) within a bounded time and memory, and the
server still answers after (docs/bad_inputs.md, "Demo server (API requests)")."""

from __future__ import annotations

import json
import resource
import threading
import time

from lightning_meta.demo.server import MAX_BODY

CLIENTS, REQUESTS = 8, 10
MAX_SECONDS = 30  # the whole load, on 2 slow shared cores (3 s measured)
MAX_GROWTH_MB = 200  # peak resident memory growth of this process, server and clients (32 MB measured;
# one request before the caps on drawings and points: 2 GB)

DOT = {"strokes": [[[0.5, 0.5]]]}
CROSS = {"strokes": [[[0.2, 0.2], [0.8, 0.8]], [[0.8, 0.2], [0.2, 0.8]]]}
VALID = {"classes": [[DOT], [CROSS, CROSS]], "test": CROSS}
TINY = {"strokes": [[[0.1, 0.1], [0.2, 0.2]]]}


def _post(body: bytes, length: str | None = None, path: str = "/api/classify") -> bytes:
    length = str(len(body)) if length is None else length
    return f"POST {path} HTTP/1.0\r\nContent-Length: {length}\r\n\r\n".encode() + body


# kind: (request bytes, expected status, whether the client stops sending without closing: the body never ends)
KINDS = {
    "info": (b"GET /api/info HTTP/1.0\r\n\r\n", 200, False),
    "classify": (_post(json.dumps(VALID).encode()), 200, False),
    "classify with images": (_post(json.dumps({**VALID, "return_images": True}).encode()), 200, False),
    "oversized": (_post(b"", length=str(MAX_BODY + 1)), 413, False),
    "deep nesting": (_post(b"[" * 100_000 + b"]" * 100_000), 400, False),
    "bad Content-Length": (_post(b"{}", length="abc"), 400, False),
    "short body, silent": (_post(b"{}", length="1000"), 408, True),
    "10,000 drawings": (_post(json.dumps({"classes": [[TINY] * 5000] * 2, "test": TINY}).encode()), 400, False),
    "bad JSON": (_post(b"{not json"), 400, False),
    "wrong method": (b"GET /api/classify HTTP/1.0\r\n\r\n", 405, False),
}


def _reset_peak_memory() -> None:
    """Start the peak resident memory (ru_maxrss) afresh from the current one, so that earlier tests' peaks do not
    hide this test's growth (Linux; elsewhere the growth can only read lower)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass


def test_concurrent_mixed_requests_are_all_answered_in_bounded_time_and_memory(quick_server, client, capsys):
    address, names = quick_server.server_address, list(KINDS)
    assert client.raw(address, KINDS["classify"][0])[0] == 200  # warm: the first adaptation allocates its buffers
    answers: list[tuple[str, int, dict, bytes]] = []
    failures: list[BaseException] = []

    def run(c: int) -> None:
        for r in range(REQUESTS):
            name = names[(c + r) % len(names)]  # each client sends every kind once, in its own order
            data, _, silent = KINDS[name]
            try:
                answers.append((name, *client.raw(address, data, close_write=not silent, timeout=20)))
            except BaseException as error:  # noqa: BLE001 (reported below)
                failures.append(error)

    _reset_peak_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux reports KB)
    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=MAX_SECONDS)
    seconds = time.monotonic() - start
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    with capsys.disabled():  # shown by pytest -q
        print(f"\ndemo load: {len(answers)} requests from {CLIENTS} clients in {seconds:.1f} s, peak memory growth "
              f"{growth:.0f} MB")  # fmt: skip
    assert not failures and not any(thread.is_alive() for thread in threads)
    assert len(answers) == CLIENTS * REQUESTS
    for name, status, headers, body in answers:
        assert status == KINDS[name][1], (name, status, body[:200])
        assert headers["content-type"] == "application/json", name
        assert (status < 400) != ("error" in json.loads(body)), (name, body[:200])
    assert seconds < MAX_SECONDS
    assert growth < MAX_GROWTH_MB
    status, _, body = client.raw(address, KINDS["info"][0])
    assert status == 200 and json.loads(body)["ways"] == 5
