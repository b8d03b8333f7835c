"""Task sources whose pixels encode the example id, so a test can recover which examples an episode holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_meta.data import ClassificationTasks, EpisodicDataModule


def id_images(num_examples: int) -> torch.Tensor:
    """uint8 (M, 2, 2) images; pixel (0, 0) holds id // 256 and pixel (0, 1) holds id % 256."""
    ids = torch.arange(num_examples)
    images = torch.zeros(num_examples, 2, 2, dtype=torch.uint8)
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return images


def decode_ids(x: torch.Tensor) -> torch.Tensor:
    """Example ids of sampled images. Shapes: x (..., 1, 2, 2) floats in [0, 1] -> (...,) int64."""
    pixels = (x[..., 0, 0, :] * 255).round().long()
    return pixels[..., 0] * 256 + pixels[..., 1]


def id_tasks(classes: int = 12, per_class: int = 20, ways: int = 5, offset: int = 0) -> ClassificationTasks:
    """`classes` classes of `per_class` examples each, over shuffled ids starting at `offset`."""
    order = torch.randperm(classes * per_class, generator=torch.Generator().manual_seed(1)) + offset
    table = list(order.view(classes, per_class))
    return ClassificationTasks(id_images(offset + classes * per_class), table, ways)


def class_of(source: ClassificationTasks) -> dict[int, int]:
    """Example id -> class index of a source."""
    return {int(i): c for c, ids in enumerate(source.class_examples) for i in ids}


class IdDataModule(EpisodicDataModule):
    """Train, val and test splits over disjoint example ids (test ids start at 1000)."""

    def build_sources(self):
        return {
            "train": id_tasks(ways=self.ways),
            "val": id_tasks(classes=8, ways=self.ways, offset=500),
            "test": id_tasks(classes=8, ways=self.ways, offset=1000),
        }


def fake_trainer(global_step: int = 0, max_steps: int = 10, global_rank: int = 0, world_size: int = 1):
    """The four trainer attributes the data module reads."""
    return SimpleNamespace(global_step=global_step, max_steps=max_steps, global_rank=global_rank, world_size=world_size)


@pytest.fixture
def make_datamodule():
    """Build a set-up IdDataModule attached to a stand-in trainer."""

    def make(trainer=None, **kwargs) -> IdDataModule:
        defaults = dict(ways=3, shots=2, queries=3, meta_batch_size=4, val_episodes=6, test_episodes=6)
        dm = IdDataModule(**{**defaults, **kwargs})
        dm.trainer = trainer if trainer is not None else fake_trainer()
        dm.setup("fit")
        return dm

    return make


@pytest.fixture
def idkit() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(
        images=id_images, decode=decode_ids, tasks=id_tasks, class_of=class_of, trainer=fake_trainer,
        DataModule=IdDataModule,
    )  # fmt: skip
