"""A tiny synthetic taskset in learn2learn's protocol, trained from the command line:

    python train.py data=taskset data.factory=examples.synthetic_taskset:tasksets trainer.max_steps=10

Any factory that returns `{"train": ..., "val": ..., "test": ...}` (or learn2learn's `BenchmarkTasksets`) of objects
with `.sample() -> (x, y)` plugs in the same way; `data.factory_args` are its keyword arguments. The network's input
layer is sized from a sampled `x` (here 3 x 16 x 16), so no image-size key has to be set.
"""

from __future__ import annotations

import torch


class SyntheticTaskSet:
    """N-way tasks over a fixed set of classes, each class a random colour pattern seen through noise.

    Like learn2learn's tasksets it draws from the global random generator (which `TaskSetTasks` seeds per episode)
    and labels examples by their class id, not 0..N-1.

    Shapes:
        sample() -> x (N * samples, channels, size, size), y (N * samples,) class ids.
    """

    def __init__(self, prototypes: torch.Tensor, class_ids: torch.Tensor, ways: int, samples: int, noise: float):
        self.prototypes, self.class_ids = prototypes, class_ids
        self.ways, self.samples, self.noise = ways, samples, noise

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        classes = self.class_ids[torch.randperm(len(self.class_ids))[: self.ways]]
        y = classes.repeat_interleave(self.samples)
        x = self.prototypes[y] + self.noise * torch.randn(len(y), *self.prototypes.shape[1:])
        return x, y


def tasksets(
    ways: int = 5,
    samples: int = 20,
    classes: tuple[int, int, int] = (40, 10, 10),
    channels: int = 3,
    size: int = 16,
    noise: float = 0.5,
    seed: int = 0,
) -> dict[str, SyntheticTaskSet]:
    """Train, val and test tasksets over disjoint classes (`classes` of each), `samples` examples per class."""
    prototypes = torch.randn(sum(classes), channels, size, size, generator=torch.Generator().manual_seed(seed))
    bounds = torch.cumsum(torch.tensor((0, *classes)), 0).tolist()
    return {
        split: SyntheticTaskSet(prototypes, torch.arange(bounds[i], bounds[i + 1]), ways, samples, noise)
        for i, split in enumerate(("train", "val", "test"))
    }
