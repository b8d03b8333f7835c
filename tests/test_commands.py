"""Every `python train.py|eval.py|demo.py ...` command (and `torchrun ... train.py ...`) in README.md and docs/*.md
composes: each is run with `--cfg job` (the composed, checked config, nothing run); a sweep runs with `-m` here, every
job composed and checked, with a task that trains nothing. Placeholders (`<run>`, `$RUN`, `...`) stand for real
values (PLACEHOLDERS); none is skipped. docs/bad_inputs.md is left out: its commands are mistakes on purpose
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
COMMAND = re.compile(r"(?:python|torchrun(?: --\S+)*) (train|eval|demo)\.py(?: [^`#\n]*)?")
# What the docs write for a value the reader fills in, and what the test fills in. An argument that is only a
# placeholder (`...`, or `$RESUME` when there is nothing to resume) is dropped.
PLACEHOLDERS = {"<run>": "run", "<step>": "1000", "<name>": "maml_omniglot_5w1s", "$RUN": "outputs/run"}
DROPPED = {"...", "$RESUME"}


def commands() -> list[tuple[str, str]]:
    """(where, command) of every documented command, continuation lines joined, comments and prompts dropped."""
    found = []
    for path in DOCS:
        text = re.sub(r"\s*\\\n\s*", " ", path.read_text())
        for number, line in enumerate(text.splitlines(), 1):
            for match in COMMAND.finditer(line):
                command = re.split(r"\s{2,}#|`", match[0])[0].strip()
                found.append((f"{path.name}:{number}", command))
    return found


COMMANDS = commands()


def test_the_docs_hold_the_commands_users_copy():
    texts = [command for _, command in COMMANDS]
    assert len(texts) > 60
    assert {"python train.py trainer.fast_dev_run=true", "python train.py debug=fdr data=sinusoid"} <= set(texts)
    assert any(" -m " in text and "hparams_search=" in text for text in texts)
    assert any(text.startswith("torchrun ") for text in texts)
    assert any(text.startswith("python demo.py") for text in texts)


def _arguments(command: str) -> tuple[str, list[str]]:
    """The script and its arguments, placeholders filled in."""
    words = shlex.split(command)
    at = next(i for i, word in enumerate(words) if re.fullmatch(r"(train|eval|demo)\.py", word))
    script = words[at].removesuffix(".py")
    args = []
    for arg in words[at + 1 :]:
        if arg in DROPPED:
            continue
        for placeholder, value in PLACEHOLDERS.items():
            arg = arg.replace(placeholder, value)
        args.append(arg)
    if script in ("eval", "demo"):  # placeholders of a checkpoint: the shipped one stands in
        args = [f"ckpt_path={DEFAULT_CHECKPOINT}" if a.startswith("ckpt_path=") else a for a in args]
        args = [a for a in args if not a.startswith(("json_path=", "trainer.devices=", "data.root="))]
    return script, args


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_has_no_placeholder_left(where, command):
    _, args = _arguments(command)
    left = [a for a in args if re.search(r"<\w+>|\$\w|\.\.\.", a)]
    assert not left, f"{where}: {command}: add the placeholders of {left} to PLACEHOLDERS or DROPPED"


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_composes(where, command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output_dir=outputs/... land in the test's folder
    script, args = _arguments(command)
    if "--help" in args or "-h" in args:
        assert MAINS[script](args) == 0
        assert "usage:" in capsys.readouterr().out
        return
    if "-m" in args:  # every job composed, checked and "run" by a task that trains nothing, here, on 2 trials at most
        args = [a for a in args if not a.startswith(("hydra/launcher=", "hydra.launcher.", "hydra.sweeper.storage="))]
        if any(a.startswith("hparams_search=") for a in args):
            args = [a for a in args if not a.startswith("hydra.sweeper.n_trials=")] + ["hydra.sweeper.n_trials=2"]
        assert cli.main(args, lambda cfg: {"val/best": 0.5, "test/acc": 0.5}) == 0, capsys.readouterr().err
        return
    if "--config-path" in args:  # a rerun: needs a run's saved config, which test_hydra.py makes
        pytest.skip("reruns a run's saved config (tests/test_hydra.py::test_a_run_reruns_from_its_saved_config)")
    status = MAINS[script](["--cfg", "job", *args])
    assert status == 0, f"{where}: {command}\n{capsys.readouterr().err}"
    assert "_target_" in capsys.readouterr().out  # the composed config was printed
