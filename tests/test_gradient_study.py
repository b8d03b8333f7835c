"""benchmarks/gradient_combinations.py: the study runs its presets through train(), logs the test curve, and draws
the figure (PNG, CSV, TensorBoard image) from the runs' event files."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("benchmarks_gradient_combinations",
                                                  REPO / "benchmarks" / "gradient_combinations.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_every_preset_is_in_the_study(study):
    shipped = sorted(p.stem.removeprefix("gradcomb_") for p in (REPO / "configs" / "experiment").glob("gradcomb_*"))
    assert sorted(study.PRESETS) == shipped and len(shipped) == 10


@pytest.mark.parametrize(
    "node, name",
    [(dict(combination=None, scale="sum", inner=dict(steps=3)), "g1+g2+g3"),
     (dict(combination=[1, 2], scale="mean", inner=dict(steps=2)), "(g1+g2)/2"),
     (dict(combination=[4], scale="mean", inner=dict(steps=4)), "g4")],
)  # fmt: skip
def test_label_is_the_papers_name(study, node, name):
    assert study.label(OmegaConf.create(node)) == name


def test_study_runs_end_to_end_and_draws_the_figure(study, omniglot_root, tmp_path):
    out, stem = tmp_path / "runs", tmp_path / "docs" / "figure"
    args = ["--steps", "2", "--eval-every", "1", "--episodes", "4", "--presets", "g1,g4", "--out", str(out),
            "--figure", str(stem), "model.hidden=8", f"data.root={omniglot_root}", "algorithm.eval_inner.steps=2",
            "data.eval_batch_size=2"]  # fmt: skip
    assert study.main(args) == 0
    with open(stem.with_suffix(".csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == study.COLUMNS
    assert [(r["preset"], r["combination"], int(r["meta_iteration"])) for r in rows] == [
        (name, name, step) for name in ("g1", "g4") for step in (0, 1, 2)
    ]
    for name in ("g1", "g4"):  # the curve's last point is the meta-test of the final weights: same episodes
        final = json.loads((out / name / "test_metrics.json").read_text())["test/acc"]
        assert float([r for r in rows if r["preset"] == name][-1]["test_acc"]) == pytest.approx(final, abs=1e-6)
    with Image.open(stem.with_suffix(".png")) as png:
        assert png.size[0] > 400 and png.size[1] > 300
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "study/gradient_combinations" in events.Tags()["images"]

    stamp = (out / "g1" / "test_metrics.json").stat().st_mtime_ns
    assert study.main(args) == 0  # finished runs are kept, the figure redrawn
    assert (out / "g1" / "test_metrics.json").stat().st_mtime_ns == stamp
