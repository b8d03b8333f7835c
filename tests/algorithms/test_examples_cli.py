"""The shipped subclass examples (ProtoMAML, BOIL) train from the command line, selected by their `_target_`, on
the synthetic learn2learn-style taskset, and move the weights their hooks say they move."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from lightning_meta.build import build
from lightning_meta.config import load_config
from lightning_meta.run import main

SHRUNK = [
    "data=taskset", "data.factory=examples.synthetic_taskset:tasksets", "algorithm=maml", "model.hidden=8",
    "trainer.max_steps=3", "data.meta_batch_size=2", "data.val_episodes=0", "data.test_episodes=4",
    "data.eval_batch_size=2", "data.queries=2", "trainer.enable_progress_bar=false", "logger=none",
]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "unchanged"),
    [
        ("examples.protomaml.ProtoMAML", ("head.weight", "head.bias")),  # the head comes from the prototypes
        ("examples.boil.BOIL", ()),  # body adapted; the head is meta-learned through the query loss
    ],
)
def test_example_trains_from_the_command_line(target, unchanged, tmp_path):
    argv = [*SHRUNK, f"algorithm._target_={target}", f"output_dir={tmp_path}"]
    pl.seed_everything(0, workers=True, verbose=False)  # as train() does, to rebuild the initial weights
    _, initial = build(load_config(argv))
    start = {k: v.clone() for k, v in initial.backbone.state_dict().items()}
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/episodes"] == 4
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["config"]["algorithm"]["_target_"] == target and saved["global_step"] == 3
    for name, value in start.items():
        trained = saved["state_dict"][f"backbone.{name}"]
        if name in unchanged:
            assert torch.equal(trained, value), name
        elif not name.startswith("features.") or name.endswith("weight"):  # conv biases: cancelled by batch norm
            assert (trained - value).abs().max() > 1e-5, name
