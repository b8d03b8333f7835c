"""Shared fixtures: the real Omniglot archives from ../shared/data (never downloaded), and shrunk run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """A data root whose omniglot/ links the shared archives; the decoded cache is kept in the git-ignored data/."""
    if not all((SHARED_OMNIGLOT / name).exists() for name in ARCHIVES):
        pytest.skip(f"the real Omniglot archives are not at {SHARED_OMNIGLOT}")
    root = REPO / "data" / "test_root"
    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        link = folder / name
        if not link.exists():
            os.symlink(SHARED_OMNIGLOT / name, link)
    return root


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
    "algorithm.eval_inner_steps=2",
]


@pytest.fixture
def shrink(omniglot_root: Path, tmp_path: Path) -> list[str]:
    """Overrides for a seconds-long Omniglot run writing into tmp_path."""
    return [*SHRINK, f"data.root={omniglot_root}", f"output_dir={tmp_path / 'run'}"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # 2-core machines run tests faster without thread oversubscription
    yield
