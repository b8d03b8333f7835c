"""End to end: shrunk `train.py` runs on Omniglot and on sines write metrics, checkpoints and their config."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_meta.config import load_config
from lightning_meta.run import main, train

REPO = Path(__file__).resolve().parent.parent

QUIET = [
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SINES = [
    "data=sinusoid", "model.hidden=[8,8]", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "data.val_episodes=4", "data.test_episodes=4", "data.eval_batch_size=2", "data.meta_batch_size=2",
    "algorithm.eval_inner.steps=2",
]  # fmt: skip


LAST = "callbacks.last_checkpoint"


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


ALGORITHMS = sorted(path.stem for path in (REPO / "configs" / "algorithm").glob("*.yaml"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_on_sines(algorithm, tmp_path):
    """Every algorithm x sinusoid pair the configs allow trains: the data member sets the step sizes sines need
    (with the Omniglot defaults iMAML went non-finite and MAML's test MSE reached 1e9 in 50 steps)."""
    out = tmp_path / "run"
    argv = [*SINES, f"algorithm={algorithm}", "trainer.max_steps=10", "trainer.val_check_interval=10", *QUIET]
    assert main([*argv, f"output_dir={out}"]) == 0
    mse = json.loads((out / "test_metrics.json").read_text())["test/mse"]
    # Predicting 0 scores E[A^2]/2 = 4.2 on these sines; a diverging run is far above, a learning one near it.
    assert math.isfinite(mse) and mse < 10.0, mse


class LastStep(pl.Callback):
    """Records, after each meta-iteration, the step held by last.ckpt on disk (None before the first save)."""

    def __init__(self, path: Path) -> None:
        self.path, self.steps = path, []

    def on_train_batch_end(self, trainer, *args) -> None:
        exists = self.path.is_file()
        self.steps.append(torch.load(self.path, weights_only=True)["global_step"] if exists else None)


@pytest.mark.parametrize(
    "every, expected",
    [
        ([f"{LAST}.every_n_steps=2", f"{LAST}.every_minutes=null"], [None, 2, 2, 4, 4, 6]),
        ([f"{LAST}.every_n_steps=null", f"{LAST}.every_minutes=1e-9"], [1, 2, 3, 4, 5, 6]),
        ([f"{LAST}.every_n_steps=null", f"{LAST}.every_minutes=null"], [None] * 6),
    ],
    ids=["by-steps", "by-time", "end-only"],
)
def test_last_checkpoint_is_written_periodically_and_atomically(every, expected, tmp_path):
    out = tmp_path / "run"
    seen = LastStep(out / "checkpoints" / "last.ckpt")
    argv = [*SINES, *QUIET, "trainer.max_steps=6", "trainer.val_check_interval=6", *every, f"output_dir={out}"]
    train(load_config(argv), extra_callbacks=[seen])
    assert seen.steps == expected
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6  # and at the end
    assert not list((out / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("logger, files", [("csv", "csv/metrics.csv"), ("none", None)])
def test_logger_is_chosen_in_the_config(logger, files, tmp_path):
    out = tmp_path / "run"
    assert main([*SINES, *QUIET, f"logger={logger}", f"output_dir={out}"]) == 0
    assert not (out / "tensorboard").exists() and (out / "checkpoints" / "last.ckpt").is_file()
    if files:
        rows = (out / files).read_text().splitlines()
        assert "train/query_loss" in rows[0] and len(rows) > 4
    else:
        assert sorted(p.name for p in out.iterdir()) == [".hydra", "checkpoints", "config.yaml", "test_metrics.json"]


def test_help_lists_groups_members_and_keys_with_comments(capsys):
    assert main(["--help", "algorithm=maml", "data.ways=20"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python train.py")
    assert re.search(r"^  algorithm +fomaml .*imaml \[maml\] ", text, re.M)
    assert re.search(r"^  logger +csv many mlflow none \[tensorboard\] wandb$", text, re.M)
    assert re.search(r"^  hydra/launcher +\[basic\] joblib slurm submitit_local submitit_slurm$", text, re.M)
    assert re.search(r"^  hparams_search +.*maml_omniglot_5w1s", text, re.M)
    assert re.search(r"^  data.ways=20 +# N, classes per task", text, re.M)
    assert re.search(r"^  algorithm.inner.lr=0.4 +# ", text, re.M)
    assert re.search(r"^  trainer.max_steps=20000 +# meta-iterations", text, re.M)
    assert re.search(r"^  callbacks.last_checkpoint.every_minutes=5.0 +# ", text, re.M)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 118
    # Notes wrap at word boundaries: a continuation line starts a word the line above did not cut.
    for above, below in zip(lines, lines[1:], strict=False):
        if re.match(r"^ {44,}  # ", below):
            assert re.search(r"\w$|[.,;:)]$", above) and re.match(r"^ +# \S", below)
    experiments = [line for line in lines if line.startswith("  experiment ")]
    assert experiments and all(len(line) <= 118 for line in experiments)


def test_cfg_prints_the_composed_config_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--cfg", "data=sinusoid", "data.shots=3", f"output_dir={out}"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.data.shots == 3 and printed.selection.model == "mlp" and printed.output_dir == str(out)
    assert not out.exists()


def test_sweep_runs_each_combination_in_its_own_directory(tmp_path, capsys):
    out = tmp_path / "sweep"
    base = [a for a in SINES if not a.startswith("model.hidden=")]
    assert main(["-m", *base, *QUIET, "seed=0,1", "model.hidden=[8],[4,4]", f"output_dir={out}"]) == 0
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["0_model.hidden=[8],seed=0", "1_model.hidden=[4,4],seed=0", "2_model.hidden=[8],seed=1",
                    "3_model.hidden=[4,4],seed=1"]  # fmt: skip
    for run in runs:
        config = OmegaConf.load(out / run / "config.yaml")
        assert config.seed == int(run[-1]) and (out / run / "test_metrics.json").is_file()
        assert config.output_dir == str(out / run)
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| job | overrides | result | test/episodes |") and len(table) == 6
    assert table[2].startswith("| 0 | seed=0 model.hidden=[8] | ok | 4 |")
    assert "\n".join(table) in capsys.readouterr().out
