"""`python demo.py`: eval.py's config grammar and checks, then a server that answers."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_meta.demo.fewshot import load_demo
from lightning_meta.demo.server import DEFAULT_CHECKPOINT, main, parse_demo_argv

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


def test_demo_py_serves_the_page_until_interrupted(client):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "demo.py"), "port=0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()  # "demo of ... (5-way): open http://127.0.0.1:<port>/  (Ctrl-C stops)"
        url = line.split("open ")[1].split()[0].rstrip("/")
        status, info = client.call(f"{url}/api/info")
        assert status == 200 and info["checkpoint"] == str(DEFAULT_CHECKPOINT) and info["ways"] == 5
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
