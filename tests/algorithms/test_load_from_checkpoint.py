"""`<Algorithm>.load_from_checkpoint(path)` rebuilds a train.py run's learner, backbone included, from the saved
config, for every algorithm."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.algorithms import IMAML, MAML, MetaLearner, MetaSGD, Reptile
from lightning_meta.config import load_config
from lightning_meta.errors import CheckpointError
from lightning_meta.run import train

CLASSES = {"reptile": Reptile, "fomaml": MAML, "maml": MAML, "imaml": IMAML, "metasgd": MetaSGD}
SINE = ["data=sinusoid", "model.hidden=[8]", "trainer.max_steps=2", "data.val_episodes=0", "data.test_episodes=2",
        "data.eval_batch_size=2", "data.meta_batch_size=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "algorithm.inner.lr=0.01"]  # fmt: skip


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_algorithm_loads_with_its_backbone(name, tmp_path):
    train(load_config([f"algorithm={name}", *SINE, f"output_dir={tmp_path}"]))
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True)["state_dict"]
    learner = CLASSES[name].load_from_checkpoint(path, **{"algorithm.eval_inner.steps": "7"})
    assert isinstance(learner, CLASSES[name]) and learner.eval_inner.steps == 7
    assert learner.state_dict().keys() == saved.keys()
    assert all(torch.equal(learner.state_dict()[k], saved[k]) for k in saved)
    assert type(MetaLearner.load_from_checkpoint(path)) is type(learner)


def test_the_wrong_class_is_named(tmp_path):
    train(load_config(["algorithm=reptile", *SINE, f"output_dir={tmp_path}"]))
    with pytest.raises(CheckpointError, match="last.ckpt holds a Reptile, not a MAML"):
        MAML.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
