"""Shared fixtures: the real Omniglot archives (never downloaded), shrunk run configs, and a snapshot of a folder's
files for the tests that check a failed command left everything as it was."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# Where the real archives are looked for: a folder named by the environment variable (CI sets it), then the
# repository's own data/omniglot (what `python train.py` reads and downloads into).
OMNIGLOT_ENV = "LIGHTNING_META_OMNIGLOT"
LOCAL_OMNIGLOT = REPO / "data" / "omniglot"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")


def _has_archives(folder: Path) -> bool:
    return all((folder / name).exists() for name in ARCHIVES)


def _link(target: Path, link: Path) -> None:
    """Make `link` a symlink to `target`, replacing a link to anywhere else (a moved or renamed folder)."""
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    os.symlink(target, link)


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """A data root holding omniglot/ with the real archives: a git-ignored data/test_root whose omniglot/ links the
    archives of the folder named by LIGHTNING_META_OMNIGLOT (the decoded cache is written there), else data/ itself
    when data/omniglot has them. Skips when neither is there; fails when the variable names a folder without them."""
    named = os.environ.get(OMNIGLOT_ENV)
    if named:
        source = Path(named).expanduser().resolve()
        if not _has_archives(source):
            pytest.fail(f"{OMNIGLOT_ENV}={named} does not hold {' and '.join(ARCHIVES)}; name a folder that does")
        root = REPO / "data" / "test_root"
        (root / "omniglot").mkdir(parents=True, exist_ok=True)
        for name in ARCHIVES:
            _link(source / name, root / "omniglot" / name)
        return root
    if _has_archives(LOCAL_OMNIGLOT):
        return LOCAL_OMNIGLOT.parent
    pytest.skip(
        f"the real Omniglot archives ({' and '.join(ARCHIVES)}) are not in {LOCAL_OMNIGLOT}; set {OMNIGLOT_ENV} to a "
        "folder holding them"
    )


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }  # fmt: skip


@pytest.fixture
def snapshot():
    """`snapshot(folder)`: {relative path: sha256} of every file under `folder` (empty when it does not exist), to
    check that a failed command left every file as it was."""
    return _snapshot


# Overrides that shrink the default Omniglot run to seconds (a small Conv4, few steps and episodes).
SHRINK = [
    "model.hidden=8",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.val_episodes=4",
    "data.test_episodes=4",
    "data.eval_batch_size=2",
    "data.meta_batch_size=2",
    "algorithm.eval_inner.steps=2",
]


@pytest.fixture
def shrink(omniglot_root: Path, tmp_path: Path) -> list[str]:
    """Overrides for a seconds-long Omniglot run writing into tmp_path."""
    return [*SHRINK, f"data.root={omniglot_root}", f"output_dir={tmp_path / 'run'}"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # 2-core machines run tests faster without thread oversubscription
    yield


@pytest.fixture(autouse=True)
def _logging_handlers():
    """A `-m` run configures Hydra's logging with a handler on the sys.stdout of that moment, which is pytest's
    capture of one test; the next test's logging must not write to it. The root and `hydra` loggers get their
    handlers back after each test (one command per process, as users run them, never sees this)."""
    loggers = [logging.getLogger(), logging.getLogger("hydra")]
    saved = [(logger, logger.handlers[:], logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def assert_rows_cover(test_file: str) -> None:
    """docs/bad_inputs.md names each test and case id of `test_file` (a path) that it lists as they are in the
    file, and lists every case id the file has."""
    import re

    path = Path(test_file)
    table = (REPO / "docs" / "bad_inputs.md").read_text()
    listed = re.findall(rf"`{re.escape(path.name)}::(\w+)(?:\[([\w-]+)\])?`", table)
    source = path.read_text()
    for test, case in listed:
        assert f"def {test}(" in source, test
        assert not case or f'id="{case}"' in source, case
    ids = set(re.findall(r'id="([\w-]+)"', source))
    assert ids <= {case for _, case in listed}, sorted(ids - {case for _, case in listed})


@pytest.fixture
def rows_cover():
    """`assert_rows_cover`, for a test module's table test."""
    return assert_rows_cover
