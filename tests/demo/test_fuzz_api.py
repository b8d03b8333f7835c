"""A Hypothesis fuzzer of the demo's JSON API: random JSON values, mutations of a valid classify request and raw
bytes are POSTed to /api/classify; every answer is 2xx, or 4xx with a JSON `{"error": ...}`, and the server stays
up. A fixed budget of examples (1,100 cases, 6 to 12 s here); `test_zz_report` prints how many cases ran. A
failure found here becomes a deterministic row of tests/demo/test_bad_requests.py."""

from __future__ import annotations

import json
import time

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install -e '.[test]' for hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lightning_meta.demo.server import MAX_BODY, MAX_DEPTH  # noqa: E402

RUN = {"cases": 0, "seconds": 0.0, "statuses": {}, "start": None}
BUDGET = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])  # fixed: no stored examples

POINT = [[140.0, 140.0], [200.0, 60.5]]
VALID = {"classes": [[{"strokes": [POINT], "size": 280}], [{"strokes": [[[20, 20], [30, 250]]], "size": 280}]],
         "test": {"strokes": [POINT], "size": 280}, "return_images": False}  # fmt: skip

numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, -0.0, 1e308, -1e308, 5e-324, 2**63, 10**300, 0.5, 280]),
)  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.sampled_from(["classes", "test", "strokes", "size", "image", "return_images", "x"]) | st.text(max_size=6),
    inner, max_size=5), max_leaves=40)  # fmt: skip


def paths(value, prefix=()):
    """Every path into a JSON value (keys and indices), the value itself first."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from paths(inner, (*prefix, key))


VALID_PATHS = list(paths(VALID))


def replaced(value, path, new):
    """A copy of `value` with the part at `path` replaced by `new` (or removed, where `new` is `REMOVE`)."""
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    if len(path) == 1 and new is REMOVE:
        del copy[path[0]]
    else:
        copy[path[0]] = replaced(copy[path[0]], path[1:], new)
    return copy


REMOVE = object()


@st.composite
def mutated_requests(draw):
    """A valid classify request with one to three parts replaced, removed, wrapped deep, or given an extra key."""
    request = VALID
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS[1:]))
        how = draw(st.sampled_from(["value", "remove", "deep", "repeat", "extra"]))
        try:
            if how == "value":
                request = replaced(request, path, draw(values))
            elif how == "remove":
                request = replaced(request, path, REMOVE)
            elif how == "deep":
                depth = draw(st.integers(1, MAX_DEPTH + 5))
                request = replaced(request, path, json.loads("[" * depth + "1" + "]" * depth))
            elif how == "repeat":  # many copies of a part: the caps on drawings and points
                part = _at(request, path[:-1])
                if isinstance(part, list) and part:
                    request = replaced(request, path[:-1], part * draw(st.sampled_from([2, 21, 300, 5000])))
            else:
                part = _at(request, path)
                if isinstance(part, dict):
                    request = replaced(request, path, {**part, draw(st.text(max_size=6)): draw(scalars)})
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced the path
            pass
    return request


def _at(value, path):
    for key in path:
        value = value[key]
    return value


def check(server, client, body: bytes) -> None:
    """POST `body`; the answer is 2xx, or 4xx JSON with "error"; never a 5xx, a dropped connection or no JSON."""
    assume(len(body) <= MAX_BODY)  # a larger one is refused unread (413, tests/demo/test_bad_requests.py)
    start = time.monotonic()
    RUN["start"] = RUN["start"] or start
    status, headers, raw = client.post(server.server_address, body, timeout=20)
    RUN["seconds"] += time.monotonic() - start
    RUN["cases"] += 1
    RUN["statuses"][status] = RUN["statuses"].get(status, 0) + 1
    answer = json.loads(raw)
    assert headers["content-type"] == "application/json"
    assert 200 <= status < 300 or (400 <= status < 500 and isinstance(answer.get("error"), str)), (status, answer)
    if status == 200:
        assert abs(sum(answer["probabilities"]) - 1) < 1e-4


def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity as Python writes them: the server refuses them


@settings(max_examples=400, **BUDGET)
@given(value=values)
def test_random_json_values(quick_server, client, value):
    check(quick_server, client, _dumps(value))


@settings(max_examples=450, **BUDGET)
@given(request=mutated_requests())
def test_mutations_of_a_valid_request(quick_server, client, request):
    check(quick_server, client, _dumps(request))


@settings(max_examples=250, **BUDGET)
@given(body=st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: _dumps(VALID)[:-1] + b),
                      st.text(alphabet="[]{}\",:0123456789.e-tnulfr ", max_size=200).map(str.encode)))  # fmt: skip
def test_raw_bytes(quick_server, client, body):
    check(quick_server, client, body)


def test_zz_report(quick_server, client, capsys):
    """Prints the count of cases the fuzzer ran (module order: after the fuzz tests); the server still answers."""
    status, _, raw = client.raw(quick_server.server_address, b"GET /api/info HTTP/1.0\r\n\r\n")
    assert status == 200 and json.loads(raw)["ways"] == 5
    with capsys.disabled():
        wall = time.monotonic() - (RUN["start"] or time.monotonic())
        print(f"\ndemo API fuzz: {RUN['cases']} cases in {wall:.1f} s ({RUN['seconds']:.1f} s waiting for answers), "
              f"statuses {RUN['statuses']}")  # fmt: skip
