"""A bug keeps its traceback, a mistake is one line: `python train.py` with a bug planted in the model exits with
the traceback (status 1), a user mistake with one `error: ...` line (status 2). Each class of `lightning_meta.errors`
is raised where its check is made, and only a `UserError` (or a file the user named) is turned into one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
from test_errors import _script

from lightning_meta.build import TRAINER_HINT, trainer_errors, user_errors
from lightning_meta.cli import guarded
from lightning_meta.data.omniglot import decode_omniglot
from lightning_meta.errors import CheckpointError, ConfigError, DataError, DivergenceError, UserError
from lightning_meta.evaluate import check_finite
from lightning_meta.models import MLP
from lightning_meta.resume import read_checkpoint

TESTS = Path(__file__).resolve().parent
TINY = [
    "data=sinusoid", "trainer.max_steps=1", "data.val_episodes=0", "data.test_episodes=2", "data.meta_batch_size=2",
    "logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


class PlantedBug(MLP):
    """The sine network with a bug in `forward` (met in training), standing for a bug of the project or of torch."""

    def forward(self, x):
        raise RuntimeError("planted bug")


class PlantedBugInInit(MLP):
    """A bug met while the run is built, where the checks of the user's settings run too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        raise ValueError("planted bug")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("model, raised", [("PlantedBug", "RuntimeError"), ("PlantedBugInInit", "ValueError")])
def test_a_bug_exits_with_its_traceback(model, raised, tmp_path):
    args = ["train.py", *TINY, f"model._target_=test_bug_vs_mistake.{model}", f"output_dir={tmp_path / 'run'}"]
    done = _script(args, PYTHONPATH=str(TESTS))  # the model's module is imported by its _target_
    assert done.returncode not in (0, 2), done.stderr[-3000:]
    assert "Traceback" in done.stderr and f"{raised}: planted bug" in done.stderr, done.stderr[-3000:]
    assert not _error_lines(done.stderr)


def test_a_mistake_exits_with_one_line(tmp_path):
    done = _script(["train.py", *TINY, "data.ways=0", f"output_dir={tmp_path / 'run'}"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _error_lines(done.stderr) == [done.stderr.strip()]
    assert done.stderr.startswith("error: data.ways=0: sine regression has no classes")


def test_the_classes():
    assert issubclass(ConfigError, ValueError)
    assert all(issubclass(c, UserError) for c in (ConfigError, DataError, CheckpointError, DivergenceError))


def test_guarded_prints_a_user_error_and_lets_a_bug_through(capsys):
    def mistake():
        raise DataError("data.root=x holds nothing; give the folder of the data")

    def bug():
        raise RuntimeError("planted bug")

    assert guarded(mistake) == 2
    assert capsys.readouterr().err == "error: data.root=x holds nothing; give the folder of the data\n"
    with pytest.raises(RuntimeError, match="planted bug"):
        guarded(bug)


def test_a_corrupt_archive_is_a_data_error(tmp_path):
    for name in ("images_background", "images_evaluation"):
        (tmp_path / f"{name}.zip").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"images_background\.zip is not a valid zip archive .*delete it") as error:
        decode_omniglot(tmp_path)
    assert error.value.__cause__ is not None  # the reader's own exception stays attached


def test_an_unreadable_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist or is not a file"):
        read_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="is not a checkpoint train.py can read"):
        read_checkpoint(tmp_path / "notes.ckpt")


def test_nonfinite_test_episodes_are_a_divergence_error():
    check_finite({"test/nonfinite_episodes": 1.0, "test/episodes": 2.0}, allow_nonfinite=True)
    with pytest.raises(DivergenceError, match="1 of 2 test episodes gave a non-finite loss"):
        check_finite({"test/nonfinite_episodes": 1.0, "test/episodes": 2.0}, allow_nonfinite=False)


def test_user_errors_converts_only_a_file_the_user_named(tmp_path):
    missing = tmp_path / "nowhere" / "train.csv"
    expected = re.escape(f"{missing}: No such file or directory; check the path")
    with pytest.raises(DataError, match=expected), user_errors():
        missing.read_text()
    for bug in (RuntimeError("planted bug"), ValueError("planted bug"), OSError("no file named")):
        with pytest.raises(type(bug)) as error, user_errors():
            raise bug
        assert error.value is bug  # the same exception, not a UserError made of it


def test_trainer_errors_converts_only_lightnings_argument_checks():
    with pytest.raises(ConfigError, match="invalid accelerator name") as error, trainer_errors():
        pl.Trainer(accelerator="abacus", logger=False)
    assert str(error.value).endswith(TRAINER_HINT)
    bug = ValueError("planted bug")
    with pytest.raises(ValueError) as error, trainer_errors():
        raise bug  # raised outside Lightning: a bug, not a trainer.* setting
    assert error.value is bug
