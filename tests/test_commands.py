"""Every `python train.py|eval.py|demo.py ...` command in the README and the docs composes: each is run with
`--cfg job` (the composed, checked config, nothing run); a sweep runs with `-m` here, every job composed and checked,
with a task that trains nothing. docs/bad_inputs.md is left out: its commands are mistakes on purpose
(tests/test_errors.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lightning_meta import cli
from lightning_meta.demo.server import DEFAULT_CHECKPOINT
from lightning_meta.demo.server import main as demo_main
from lightning_meta.evaluate import main as eval_main
from lightning_meta.run import main as train_main

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "bad_inputs.md")]
MAINS = {"train": train_main, "eval": eval_main, "demo": demo_main}


def commands() -> list[tuple[str, str]]:
    """(where, command) of every documented command, continuation lines joined, comments and prompts dropped."""
    found = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for number, line in enumerate(text.splitlines(), 1):
            for match in re.finditer(r"python (train|eval|demo)\.py(?: [^`#\n]*)?", line):
                command = re.split(r"\s{2,}#|`", match[0])[0].strip()
                if command.endswith(" ...") or "<name>" in command or "$" in command:  # placeholders, shell variables
                    continue
                found.append((f"{path.name}:{number}", command))
    return found


COMMANDS = commands()


def test_the_docs_hold_the_commands_users_copy():
    texts = [command for _, command in COMMANDS]
    assert len(texts) > 40
    assert "python train.py debug=fdr data=sinusoid" in texts
    assert any(" -m " in text and "hparams_search=" in text for text in texts)


def _arguments(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    script = words[1].removesuffix(".py")
    args = words[2:]
    if script in ("eval", "demo"):  # placeholders of a checkpoint: the shipped one stands in
        args = [f"ckpt_path={DEFAULT_CHECKPOINT}" if a.startswith("ckpt_path=") else a for a in args]
        args = [a for a in args if not a.startswith(("json_path=", "trainer.devices=", "data.root="))]
    return script, args


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_composes(where, command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output_dir=outputs/... land in the test's folder
    script, args = _arguments(command)
    if "--help" in args or "-h" in args:
        assert MAINS[script](args) == 0
        return
    if "-m" in args:  # every job composed, checked and "run" by a task that trains nothing, here, on 2 trials at most
        args = [a for a in args if not a.startswith(("hydra/launcher=", "hydra.launcher.", "hydra.sweeper.storage="))]
        if any(a.startswith("hparams_search=") for a in args):
            args += ["hydra.sweeper.n_trials=2"]
        assert cli.main(args, lambda cfg: {"val/best": 0.5, "test/acc": 0.5}) == 0, capsys.readouterr().err
        return
    if "--config-path" in args:  # a rerun: needs a run's saved config, which test_hydra.py makes
        pytest.skip("reruns a run's saved config (tests/test_hydra.py::test_a_run_reruns_from_its_saved_config)")
    status = MAINS[script](["--cfg", "job", *args])
    assert status == 0, f"{where}: {command}\n{capsys.readouterr().err}"
