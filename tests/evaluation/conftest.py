"""Shrunk training runs shared by the evaluation tests, each trained once per session and then reused."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from lightning_meta.config import load_config
from lightning_meta.run import train


class Run(NamedTuple):
    out: Path  # the run directory
    metrics: dict[str, float]  # what train() returned: the logged test metrics
    argv: list[str]

    @property
    def best(self) -> Path:
        """The checkpoint train() meta-tested (the best by validation; save_top_k=1 keeps one)."""
        (best,) = (self.out / "checkpoints").glob("best-*.ckpt")
        return best


_RUNS: dict[str, Run] = {}

SINE = [
    "data=sinusoid",
    "model.hidden=[8,8]",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.meta_batch_size=2",
    "data.val_episodes=4",
    "data.test_episodes=6",
    "data.eval_batch_size=4",  # 6 test episodes: one full batch and one of 2
    "algorithm.inner.optimizer=sgd",
    "algorithm.inner.lr=0.02",
    "algorithm.inner.batch_size=null",
    "algorithm.eval_inner.optimizer=sgd",
    "algorithm.eval_inner.lr=0.02",
    "algorithm.eval_inner.steps=10",
    "algorithm.eval_curve_steps=[1,5,10]",
]


def _trained(name: str, argv: list[str], tmp_path_factory) -> Run:
    if name not in _RUNS:
        out = tmp_path_factory.mktemp(name)
        argv = [*argv, f"output_dir={out}"]
        _RUNS[name] = Run(out, train(load_config(argv)), argv)
    return _RUNS[name]


@pytest.fixture
def omniglot_run(shrink: list[str], tmp_path_factory) -> Run:
    """The shared shrunk Omniglot run (Reptile, 4 meta-iterations) with a curve at 0 and 1 inner steps."""
    argv = [a for a in shrink if not a.startswith("output_dir=")] + ["algorithm.eval_curve_steps=[0,1]"]
    return _trained("omniglot_run", argv, tmp_path_factory)


@pytest.fixture
def sine_run(tmp_path_factory) -> Run:
    """A shrunk sine-regression run (Reptile with SGD inner steps) logging MSE after 1, 5 and 10 steps."""
    return _trained("sine_run", SINE, tmp_path_factory)
