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
from omegaconf import OmegaConf

from lightning_meta.demo.fewshot import load_demo
from lightning_meta.demo.server import (
    DEFAULT_CHECKPOINT,
    DemoServer,
    main,
    make_server,
    serve_until_interrupted,
)

REPO = Path(__file__).resolve().parents[2]


def test_cfg_job_shows_the_demos_own_keys_beside_the_overridden_saved_config(capsys):
    assert main(["--cfg", "job", "port=0", "algorithm.eval_inner.steps=5", "host=0.0.0.0"]) == 0
    shown = OmegaConf.create(capsys.readouterr().out)
    assert (shown.ckpt_path, shown.host, shown.port) == (str(DEFAULT_CHECKPOINT), "0.0.0.0", 0)
    assert shown.algorithm.eval_inner.steps == 5 and shown.data.ways == 5


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


def _ask(address) -> bytes:
    with socket.create_connection(address) as asking:
        asking.sendall(b"GET /api/info HTTP/1.0\r\n\r\n")
        return asking.makefile("rb").read()


def _serve_with_sigint(server, sigint_handler, client) -> None:
    """`serve_until_interrupted(server)` on this (main) thread with SIGINT set to `sigint_handler`, while `client`
    runs on another thread and ends it with a signal; SIGINT's handler is restored after."""
    asking = threading.Thread(target=client)
    previous = signal.signal(signal.SIGINT, sigint_handler)
    try:
        asking.start()
        serve_until_interrupted(server)
    finally:
        signal.signal(signal.SIGINT, previous)
    asking.join(timeout=10)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_a_handler_starts_still_answers_its_request(stop_signal):
    starting, answers = threading.Event(), []

    class SlowToStart(DemoServer):  # Ctrl-C while socketserver started a handler thread broke server_close in CI
        def process_request(self, request, client_address):
            starting.set()
            time.sleep(0.3)
            super().process_request(request, client_address)

    server = SlowToStart(("127.0.0.1", 0), SimpleNamespace(info=lambda: {"ways": 5}))
    before, terminate_handler = set(threading.enumerate()), signal.getsignal(signal.SIGTERM)

    def ask_then_signal():
        asking = threading.Thread(target=lambda: answers.append(_ask(server.server_address[:2])))
        asking.start()
        starting.wait(10)
        os.kill(os.getpid(), stop_signal)
        asking.join(10)

    _serve_with_sigint(server, signal.default_int_handler, ask_then_signal)  # as when run from a terminal
    assert answers and answers[0].startswith(b"HTTP/1.0 200 ") and answers[0].endswith(b'{"ways": 5}')
    assert not [thread for thread in set(threading.enumerate()) - before if thread.is_alive()]
    assert signal.getsignal(signal.SIGTERM) == terminate_handler  # the handlers it set are undone


def test_an_ignored_sigint_stays_ignored_and_sigterm_stops():
    server = make_server(SimpleNamespace(info=lambda: {"ways": 5}), "127.0.0.1", 0)
    answers = []

    def interrupt_ask_then_terminate():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        answers.append(_ask(server.server_address[:2]))
        os.kill(os.getpid(), signal.SIGTERM)

    _serve_with_sigint(server, signal.SIG_IGN, interrupt_ask_then_terminate)  # as in a shell's background job
    assert answers and answers[0].endswith(b'{"ways": 5}')
