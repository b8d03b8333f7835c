"""End to end: shrunk `train.py` runs on Omniglot and on sines write metrics, checkpoints and their config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_meta.config import load_config
from lightning_meta.run import main, train

QUIET = [
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SINES = [
    "data=sinusoid", "model.hidden=[8,8]", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "data.val_episodes=4", "data.test_episodes=4", "data.eval_batch_size=2", "data.meta_batch_size=2",
    "algorithm.eval_inner_steps=2",
]  # fmt: skip


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files: tag -> [(step, value), ...] in step order."""
    tags: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((run / "tensorboard").rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            tags.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(values) for tag, values in tags.items()}


def is_plain(value) -> bool:
    """Only dict / list / str / int / float / bool / None, all the way down (what weights_only=True loads)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def check_checkpoint(run: Path, steps: int) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    config = ckpt["hyper_parameters"]["config"]
    assert type(config) is dict and is_plain(config)
    assert config == OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert ckpt["global_step"] == steps
    return config


def test_omniglot_run(shrink):
    out = Path(next(a for a in shrink if a.startswith("output_dir=")).partition("=")[2])
    metrics = train(load_config([*shrink, *QUIET]))
    tags = scalars(out)
    assert [step for step, _ in tags["train/query_loss"]] == [0, 1, 2, 3]
    assert all(math.isfinite(v) and v > 0 for _, v in tags["train/query_loss"])
    assert len(tags["val/acc"]) == 2  # validation after meta-iterations 2 and 4
    assert all(0.0 <= v <= 1.0 for _, v in tags["val/acc"]) and tags["val/episodes"][0][1] == 4
    # Logged by the test loop (and again beside the hparams): the value train() returns.
    assert all(v == pytest.approx(metrics["test/acc"], abs=1e-6) for _, v in tags["test/acc"])
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert {v for _, v in tags["test/episodes"]} == {4.0}
    assert tags["train/lr"][0][1] == 1.0 and tags["train/lr"][-1][1] == 0.25  # meta step size 1 -> 0 over 4
    config = check_checkpoint(out, steps=4)
    assert config["model"]["hidden"] == 8 and config["data"]["ways"] == 5 and config["selection"]["data"] == "omniglot"
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt" and names[0].startswith("best-")


def test_sinusoid_run(tmp_path):
    """Through `main`, what `python train.py` runs (test_config.py covers the interpreter round trip)."""
    out = tmp_path / "run"
    assert main([*SINES, *QUIET, f"output_dir={out}"]) == 0
    tags = scalars(out)
    assert len(tags["train/query_loss"]) == 4 and len(tags["val/mse"]) == 2 and "val/acc" not in tags
    assert all(math.isfinite(v) and v >= 0 for tag in ("val/mse", "test/mse") for _, v in tags[tag])
    assert {v for _, v in tags["test/episodes"]} == {4.0}
    config = check_checkpoint(out, steps=4)
    assert config["model"]["_target_"] == "lightning_meta.models.MLP" and config["model"]["hidden"] == [8, 8]
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt" and names[0].startswith("best-")
