"""Helpers of the scale tests: tiny run configs, test-only callbacks, checkpoint and TensorBoard readers, and a
subprocess runner (Lightning's DDP launcher re-runs the command line, so DDP runs must be subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_meta.build import build
from lightning_meta.config import load_config
from lightning_meta.data.episode import EpisodeBatches

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "ddp_script.py"
ALGORITHMS = ("reptile", "fomaml", "maml", "imaml")
# Beyond tests/conftest.py's SHRINK: cheap inner loops (iMAML's paper setting is 16 inner steps, 5 CG steps).
TINY = {"imaml": ["algorithm.inner.steps=2", "algorithm.cg_steps=2"]}
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def algorithm_params() -> list:
    """The four algorithms; one whose config file does not exist yet is skipped with the reason."""
    params = []
    for name in ALGORITHMS:
        missing = not (REPO / "configs" / "algorithm" / f"{name}.yaml").exists()
        reason = f"configs/algorithm/{name}.yaml does not exist (yet)"
        params.append(pytest.param(name, marks=pytest.mark.skipif(missing, reason=reason)))
    return params


def overrides(algorithm: str, shrink: list[str], out: Path, *extra: str) -> list[str]:
    """Command-line overrides of a tiny Omniglot run of `algorithm` writing into `out` (later ones win)."""
    return [f"algorithm={algorithm}", *shrink, *TINY.get(algorithm, []), *extra, f"output_dir={out}"]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max(|b|, 1e-12)) over all tensors of two state dicts with the same keys."""
    assert a.keys() == b.keys()
    abs_diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    rel = max(float(((a[k].double() - b[k].double()).abs() / b[k].double().abs().clamp_min(1e-12)).max()) for k in a)
    return abs_diff, rel


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """TensorBoard scalars of a run (all event files, e.g. before and after a resume): tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, dict[int, float]] = {}
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            tags.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return tags


def run_python(
    args: list[str], timeout: float = 240, env: dict | None = None, status: int = 0
) -> subprocess.CompletedProcess:
    """Run `python <args>` in the repository root with one thread per process (and `env` added to the
    environment); fails the test on another exit status than `status` (143: a run SIGTERM stopped)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )  # fmt: skip
    assert done.returncode == status, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


class StopAt(pl.Callback):
    """Sends SIGTERM to its own process (rank 0 only) during step `step`, as a scheduler preempting the job would;
    LastCheckpoint then stops every rank after that step with `global_step == step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step - 1 and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class SaveRankParams(pl.Callback):
    """Writes each rank's final parameters to `<output_dir>/rank<r>.pt` (DDP ranks must hold identical ones)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")


# Sine regression settings under which each algorithm learns in 20 steps on one fixed meta-batch (the
# algorithms' Omniglot defaults, e.g. inner.lr 0.4, diverge on sines).
SINE = {
    "reptile": [],
    "fomaml": ["algorithm.outer.lr=0.01", "algorithm.inner.lr=0.01"],
    "maml": ["algorithm.outer.lr=0.01", "algorithm.inner.lr=0.01"],
    "imaml": [
        "algorithm.outer.lr=0.01",
        "algorithm.inner.lr=0.02",
        "algorithm.inner.steps=10",
        "algorithm.inner.lam=10.0",
    ],  # fmt: skip
}
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def sine_learner(algorithm: str, *extra: str):
    """(learner, one fixed meta-batch of 4 sine tasks) for a 1-40-40-1 MLP."""
    torch.manual_seed(0)
    cfg = load_config([f"algorithm={algorithm}", "data=sinusoid", "model.hidden=[40,40]", *SINE[algorithm], *extra])
    datamodule, learner = build(cfg)
    datamodule.setup("fit")
    shots = (datamodule.train_shots, datamodule.train_queries)
    return learner, EpisodeBatches(datamodule.sources["train"], 0, "train", shots, range(4), 4)[0]


def fit_fixed(learner, batch, steps: int, **trainer_args) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, inference_mode=False, use_distributed_sampler=False,
        **QUIET, **trainer_args,
    )  # fmt: skip
    trainer.fit(learner, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return trainer


def rel_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all tensors of two parameter dicts."""
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in b).sqrt() / sum((b[k] ** 2).sum() for k in b).sqrt())
