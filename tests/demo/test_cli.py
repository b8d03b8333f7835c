"""`python demo.py`: eval.py's config grammar and checks, then a server that answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_meta.demo.fewshot import load_demo
from lightning_meta.demo.server import DEFAULT_CHECKPOINT, main, make_server, parse_demo_argv

REPO = Path(__file__).resolve().parents[2]


def test_arguments_split_into_the_demos_own_and_config_overrides():
    own, overrides = parse_demo_argv(["port=0", "algorithm.eval_inner.steps=5", "host=0.0.0.0"])
    assert own == {"ckpt_path": str(DEFAULT_CHECKPOINT), "host": "0.0.0.0", "port": "0"}
    assert overrides == ["algorithm.eval_inner.steps=5"]


def test_overrides_reach_the_learner(demo):
    assert demo.info()["inner_steps"] == demo.learner.eval_inner.steps
    changed = load_demo(DEFAULT_CHECKPOINT, ["algorithm.eval_inner.steps=7", "algorithm.transductive=true"])
    assert (changed.info()["inner_steps"], changed.info()["transductive"]) == (7, True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["algorithm.nonsense=1"], "unknown key algorithm.nonsense"),
        (["algorithm=reptile"], "selects a config group"),
        (["algorithm.eval_inner.steps=many"], "algorithm.eval_inner"),
        (["port=http"], "port=http is not a port number"),
        (["ckpt_path=no/such.ckpt"], "does not exist"),
    ],
)
def test_mistakes_exit_2_with_the_fix(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_py_serves_the_page_until_interrupted(client, tmp_path):
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "demo.py"), "port=0"], stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a crash on the way out prints every thread's stack
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C works where it is ignored
        )  # fmt: skip
        silent = None
        try:
            line = process.stdout.readline()  # "demo of ... (5-way): open http://127.0.0.1:<port>/  (Ctrl-C stops)"
            url = line.split("open ")[1].split()[0].rstrip("/")
            status, info = client.call(f"{url}/api/info")
            assert status == 200 and info["checkpoint"] == str(DEFAULT_CHECKPOINT) and info["ways"] == 5
            silent = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))  # open, sends nothing
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=30)
            stderr.seek(0)
            assert code == 0, stderr.read()[-4000:]
            if silent is not None:
                silent.close()


def test_closing_the_server_answers_requests_in_flight_and_ends_silent_connections():
    answer_now = threading.Event()
    slow = SimpleNamespace(info=lambda: answer_now.wait(10) and {"ways": 5})  # answers once `answer_now` is set
    server = make_server(slow, "127.0.0.1", 0)
    before = set(threading.enumerate())
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    silent = socket.create_connection(server.server_address[:2])  # connected, never sends a request
    asking = socket.create_connection(server.server_address[:2])
    try:
        asking.sendall(b"GET /api/info HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 10
        while len(set(threading.enumerate()) - before) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        handlers = set(threading.enumerate()) - before - {serving}
        assert len(handlers) == 2  # one waits for a request line, one is answering
        server.shutdown()
        threading.Timer(0.3, answer_now.set).start()  # still answering when server_close starts
        closing = threading.Thread(target=server.server_close, daemon=True)
        closing.start()
        closing.join(timeout=10)
        assert not closing.is_alive() and not any(thread.is_alive() for thread in handlers)
        answer = asking.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b'{"ways": 5}')
    finally:
        silent.close()
        asking.close()
