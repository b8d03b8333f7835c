"""Requests the demo server refuses: each answers a 4xx JSON `{"error": ...}` naming the fix, and the server stays up
(docs/bad_inputs.md, "Demo server (API requests)")."""

from __future__ import annotations

import errno
import json
import math
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from lightning_meta.demo import server as server_module
from lightning_meta.demo.fewshot import MAX_SHOTS, MAX_TOTAL_POINTS
from lightning_meta.demo.server import MAX_BODY, MAX_DEPTH, main, make_server

DOT = {"strokes": [[[0.5, 0.5]]]}
VALID = {"classes": [[DOT], [{"strokes": [[[0.2, 0.2], [0.8, 0.8]]]}]], "test": DOT}


def circle(turns: int, points: int) -> dict:
    """A drawing of `points` points on a 280-pixel canvas."""
    angle = lambda i: 2 * math.pi * i / points
    return {"strokes": [[[140 + 100 * math.cos(turns * angle(i)), 140 + 100 * math.sin(angle(i))]
                         for i in range(points)]], "size": 280}  # fmt: skip


@pytest.fixture
def ask(quick_server, client):
    """(status, headers, JSON answer) of raw bytes sent to the quick server."""

    def ask(data: bytes, **kwargs):
        status, headers, body = client.raw(quick_server.server_address, data, **kwargs)
        return status, headers, json.loads(body)

    return ask


@pytest.fixture
def post_json(quick_server, client):
    """(status, JSON answer) of a POST of `body` (a value to encode, or bytes) to /api/classify."""

    def post_json(body, path: str = "/api/classify"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, _, answer = client.post(quick_server.server_address, data, path=path)
        return status, json.loads(answer)

    return post_json


# 1. Where it serves ---------------------------------------------------------------------------------------------


def test_a_busy_port_names_the_cause_and_the_fix(monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError) as raised:  # not the AttributeError of a half-built server
            make_server(SimpleNamespace(), "127.0.0.1", port)
        assert raised.value.errno == errno.EADDRINUSE
        monkeypatch.setattr(server_module, "load_demo", lambda *args: SimpleNamespace(ways=5))
        assert main([f"port={port}"]) == 2
    err = capsys.readouterr().err
    assert (f"cannot serve on host=127.0.0.1 port={port} ([Errno 98] Address already in use); give another port "
            "(port=0: any free port) or host") in err  # fmt: skip
    assert "Traceback" not in err and "AttributeError" not in err and len(err.strip().splitlines()) == 1


def test_an_ipv6_host_is_served_over_ipv6(client):
    try:
        server = make_server(SimpleNamespace(info=lambda: {"ways": 5}), "::1", 0)
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here ({error})")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert client.call(f"http://[::1]:{server.server_address[1]}/api/info") == (200, {"ways": 5})
    finally:
        server.shutdown()
        server.server_close()


def test_a_host_that_cannot_be_bound_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(server_module, "load_demo", lambda *args: SimpleNamespace(ways=5))
    assert main(["host=::zz", "port=0"]) == 2  # not an address; likewise ::1 where IPv6 is off
    err = capsys.readouterr().err
    assert "cannot serve on host=::zz port=0 (" in err and "Traceback" not in err


# 2. Content-Length and a body that stops -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, status, message",
    [
        ("abc", 400, "Content-Length: abc is not the body's length"),
        ("-1", 400, "Content-Length: -1 is not"),
        ("1.5", 400, "Content-Length: 1.5 is not"),
        ("+2", 400, "Content-Length: +2 is not"),
        (None, 411, "send the body with a Content-Length header"),
        (str(MAX_BODY + 1), 413, f"send at most {MAX_BODY}"),
        ("1000", 400, "the body has 2 bytes, its Content-Length says 1000"),  # and the client ends its sending
    ],
)
def test_a_bad_content_length_is_refused(ask, length, status, message):
    header = "" if length is None else f"Content-Length: {length}\r\n"
    answer = ask(f"POST /api/classify HTTP/1.0\r\n{header}\r\n{{}}".encode())
    assert answer[0] == status and message in answer[2]["error"]


def test_two_different_content_lengths_are_refused(ask):
    status, _, answer = ask(b"POST /api/classify HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
    assert status == 400 and "Content-Length: 2, 3" in answer["error"]


def test_a_body_that_stops_arriving_is_answered_408_after_the_read_timeout(ask):
    start = time.monotonic()
    status, _, answer = ask(b"POST /api/classify HTTP/1.0\r\nContent-Length: 1000\r\n\r\n{}", close_write=False)
    assert status == 408 and "stopped arriving for 1 s" in answer["error"]
    assert time.monotonic() - start < 5  # the quick server's read timeout is 1 s


# 3. Nesting ---------------------------------------------------------------------------------------------------


def test_deep_nesting_is_refused_before_parsing(post_json):
    message = f"the body nests 100000 brackets deep; a request nests at most {MAX_DEPTH} (a valid one: 7)"
    assert post_json(b"[" * 100_000 + b"]" * 100_000) == (400, {"error": message})
    status, answer = post_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert status == 400 and f"nests {MAX_DEPTH + 1} brackets deep" in answer["error"]


def test_brackets_inside_strings_do_not_count_as_nesting(post_json):
    status, answer = post_json({"classes": "[{" * 1000 + '\\"[', "test": DOT})
    assert status == 400 and '"classes" must list 2 to 5 classes' in answer["error"]


# 4. The work one request asks for ----------------------------------------------------------------------------------


def test_ten_thousand_drawings_are_refused_at_once(post_json):
    tiny = {"strokes": [[[0.1, 0.1], [0.2, 0.2]]]}
    start = time.monotonic()
    status, answer = post_json({"classes": [[tiny] * 5000, [tiny] * 5000], "test": tiny})  # 0.41 MB: 15 s, 2 GB
    assert status == 400 and answer["error"] == f"class 1 has 5000 drawings; send at most {MAX_SHOTS} per class"
    assert time.monotonic() - start < 5


def test_too_many_points_in_all_are_refused(post_json):
    status, answer = post_json({"classes": [[circle(1, 20_000)], [circle(2, 20_000)]], "test": circle(3, 20_000)})
    assert status == 400 and "60000 stroke points in all; send at most 50000" in answer["error"]


def test_a_request_at_the_bounds_is_answered(post_json):
    classes = [[circle(c + 1, (MAX_TOTAL_POINTS - 500) // 100)] * MAX_SHOTS for c in range(5)]
    start = time.monotonic()
    status, answer = post_json({"classes": classes, "test": circle(2, 500)})
    assert status == 200 and answer["shots"] == [MAX_SHOTS] * 5
    assert time.monotonic() - start < 10  # 0.25 s here on one core


# 5. Booleans -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, "true", None, [True]])
def test_return_images_must_be_a_json_boolean(post_json, value):
    status, answer = post_json({**VALID, "return_images": value})
    assert status == 400 and '"return_images" must be true or false (a JSON boolean)' in answer["error"]


# 6. Methods ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, allow",
    [("GET", "/api/classify", "POST"), ("POST", "/api/info", "GET"), ("PUT", "/api/classify", "POST"),
     ("DELETE", "/api/info", "GET"), ("POST", "/", "GET"), ("PATCH", "/nothing", "GET")],
)  # fmt: skip
def test_a_method_a_route_does_not_serve_is_405_with_allow(ask, method, path, allow):
    status, headers, answer = ask(f"{method} {path} HTTP/1.0\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    assert status == 405 and headers["allow"] == allow and headers["content-type"] == "application/json"
    assert "is not served" in answer["error"]


# 7. Malformed requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"", '"classes" and "test"'),
        (b"[1, 2]", '"classes" and "test"'),
        (b'"classes"', '"classes" and "test"'),
        (b'{"classes": [[{"strokes": [[[1' + b"0" * 5000 + b', 1]]]}]], "test": {}}', "not JSON"),  # > 4300 digits
        (json.dumps({**VALID, "extra": 1}).encode(), "unknown key 'extra' in the request"),
        (json.dumps({"classes": {"a": 1}, "test": DOT}).encode(), "not {'a': 1}"),
        (json.dumps({**VALID, "test": {"strokes": [[["1", "2"]]]}}).encode(), "two finite numbers"),
        (json.dumps({**VALID, "test": {"strokes": [[[True, False]]]}}).encode(), "two finite numbers"),
        (json.dumps({**VALID, "test": {"strokes": [[[None, 0.5]]]}}).encode(), "two finite numbers"),
        (b'{"classes": [[{"strokes": [[[0.5, 0.5]]]}]], "test": {"strokes": [[[NaN, 0.5]]]}}', "NaN is not a JSON"),
        (b'{"classes": [[{"strokes": [[[0.5, 0.5]]]}]], "test": {"strokes": [[[-Infinity, 0]]]}}', "-Infinity is"),
        (json.dumps({**VALID, "test": {"strokes": [[[0.5, 0.5]]], "size": 10**400}}).encode(), "positive number"),
        (json.dumps({**VALID, "test": {"strokes": [[[0.5, 0.5]]], "size": 1e-320}}).encode(), "the drawing is empty"),
        (json.dumps({**VALID, "test": {"strokes": [[[1e308, 1e308], [-1e308, 0]]]}}).encode(), "empty"),
        (json.dumps({**VALID, "test": {"image": [[2] * 28] * 28}}).encode(), "lie in [0, 1]"),
        (json.dumps({**VALID, "test": {"image": [[0.5] * 28] * 27}}).encode(), "28 rows of 28 numbers"),
    ],
)
def test_malformed_bodies_get_400_and_the_fix(post_json, body, message):
    status, answer = post_json(body)
    assert status == 400 and message in answer["error"], answer
    assert len(answer["error"]) < 400  # a message, never the request echoed back


def test_a_long_value_is_cut_short_in_the_message(post_json):
    status, answer = post_json({"classes": "x" * 10_000, "test": DOT})
    assert status == 400 and len(answer["error"]) < 200


def test_unknown_paths_and_garbage_get_json_errors_and_the_server_stays_up(ask, post_json, quick_server, client):
    assert post_json({}, path="/api/nothing")[0] == 404
    status, headers, answer = ask(b"GET /nothing HTTP/1.0\r\n\r\n")
    assert status == 404 and "no page /nothing" in answer["error"]
    for garbage in (b"GET / HTTP/x.y\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/1.0 extra\r\n\r\n"):
        status, headers, answer = ask(garbage)
        assert status == 400 and headers["content-type"] == "application/json" and answer["error"]
    status, headers, answer = ask(b"GARBAGE / HTTP/1.0\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET"
    status, headers, answer = ask(b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")
    assert status == 414 and answer["error"]
    status, info = client.call(f"http://127.0.0.1:{quick_server.server_address[1]}/api/info")
    assert status == 200 and info["ways"] == 5


def test_a_bug_of_the_demo_answers_500_json_and_the_server_stays_up(client):
    def broken(request):
        raise RuntimeError("planted bug")

    server = make_server(SimpleNamespace(classify=broken, info=lambda: {"ways": 5}), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, _, body = client.post(server.server_address, b"{}")
        assert status == 500 and "internal error of the demo server (RuntimeError)" in json.loads(body)["error"]
        assert client.call(f"http://127.0.0.1:{server.server_address[1]}/api/info") == (200, {"ways": 5})
    finally:
        server.shutdown()
        server.server_close()
