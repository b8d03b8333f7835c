"""Any taskset from the config: the factory, the input shape read from a sample, pure episodes, and a CLI run."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_meta.build import build
from lightning_meta.config import ConfigError, load_config
from lightning_meta.data import TaskSetDataModule, sample_episode
from lightning_meta.errors import DataError

REPO = Path(__file__).resolve().parents[2]
FACTORY = "examples.synthetic_taskset:tasksets"


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # `python train.py` has the repository root on sys.path


def make(**kwargs) -> TaskSetDataModule:
    dm = TaskSetDataModule(**{"factory": FACTORY, "ways": 5, "shots": 2, "queries": 3, **kwargs})
    dm.setup()
    return dm


def test_sources_episodes_and_input_shape_come_from_the_tasksets():
    dm = make(factory_args={"channels": 2, "size": 12})
    assert sorted(dm.sources) == ["test", "train", "val"] and dm.input_shape() == (2, 12, 12)
    ep = sample_episode(dm.sources["val"], 0, "val", 4, shots=2, queries=3)
    assert ep.support_x.shape == (10, 2, 12, 12) and ep.query_x.shape == (15, 2, 12, 12)
    assert torch.equal(torch.bincount(ep.support_y), torch.full((5,), 2))
    assert torch.equal(torch.bincount(ep.query_y), torch.full((5,), 3))


def test_episodes_are_pure_although_the_taskset_uses_the_global_generators():
    a, b = make(), make()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(5)
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first = [sample_episode(a.sources["test"], 0, "test", i, 2, 3) for i in range(3)]
    again = [sample_episode(b.sources["test"], 0, "test", i, 2, 3) for i in range(3)]
    assert all(torch.equal(x, y) for e, f in zip(first, again, strict=True) for x, y in zip(e, f, strict=True))
    assert not torch.equal(first[0].support_x, first[1].support_x)
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]  # left as they were
    assert np.array_equal(np.random.get_state()[1], state[2])


def test_factory_results_in_every_accepted_shape(monkeypatch):
    from collections import namedtuple

    from examples.synthetic_taskset import tasksets

    sets = tasksets()
    benchmark = namedtuple("BenchmarkTasksets", "train validation test")(sets["train"], sets["val"], sets["test"])
    module = type(sys)("fake_factories")
    module.as_tuple = lambda: (sets["train"], sets["val"], sets["test"])
    module.as_benchmark = lambda: benchmark
    module.without_val = lambda: {"train": sets["train"], "test": sets["test"]}
    monkeypatch.setitem(sys.modules, "fake_factories", module)
    for name in ("as_tuple", "as_benchmark"):
        assert sorted(make(factory=f"fake_factories:{name}").sources) == ["test", "train", "val"]
    dm = make(factory="fake_factories:without_val")
    assert sorted(dm.sources) == ["test", "train"] and dm.val_episodes == 0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(factory=""), ConfigError, r"data=taskset needs data\.factory=package\.module:function"),
        (dict(factory="examples.synthetic_taskset"), ConfigError, r"data\.factory='examples\.synthetic_taskset';"),
        (dict(factory="examples.nothing_here:f"), ConfigError, r"data\.factory=examples\.nothing_here:f cannot be"),
        (dict(factory="examples.synthetic_taskset:nope"), ConfigError, r"cannot be imported .*has no attribute 'nope'"),
        (dict(factory_args={"wayz": 5}), ConfigError, r"data\.factory_args=\{'wayz': 5\} do not fit .*wayz"),
        (dict(ways=4), DataError, r"data\.ways=4 but the train taskset's tasks have 5 classes; set data\.ways=5"),
        (dict(shots=15, queries=10), DataError, r"train: shots\+queries=25 but the taskset gave 20 examples for a"),
    ],
)
def test_configuration_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)


def test_model_input_is_read_from_a_sample():
    cfg = load_config(["data=taskset", f"data.factory={FACTORY}", "model.hidden=4"])
    assert (cfg.model.in_channels, cfg.model.image_size) == (1, 28)  # conv4's own values before the build
    _, learner = build(cfg)
    assert (cfg.model.in_channels, cfg.model.image_size) == (3, 16)
    assert learner.backbone(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


def test_example_trains_ten_steps_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "train.py", "data=taskset", f"data.factory={FACTORY}", "trainer.max_steps=10",
        "model.hidden=8", "data.val_episodes=2", "data.test_episodes=4", "trainer.val_check_interval=5",
        "trainer.enable_progress_bar=false", "algorithm.eval_inner.steps=2", f"output_dir={out}",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TaskSetDataModule: train TaskSetTasks; val TaskSetTasks; test TaskSetTasks; examples 3x16x16" in run.stderr
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10
    assert checkpoint["hyper_parameters"]["config"]["model"]["in_channels"] == 3
