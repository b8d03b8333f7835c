"""Tiny float64 tasks and models on which exact meta-gradients can be computed independently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_meta.data.episode import Episode
from lightning_meta.models import MLP, Conv4

REPO = Path(__file__).resolve().parents[2]


def random_episode(seed: int, x_shape=(4,), ways=3, shots=2, queries=2, tasks: int | None = None) -> Episode:
    """A classification episode (or a meta-batch of `tasks` of them) with random float64 inputs."""
    g = torch.Generator().manual_seed(seed)
    lead = () if tasks is None else (tasks,)
    return Episode(
        torch.randn(*lead, ways * shots, *x_shape, generator=g, dtype=torch.float64),
        torch.randint(0, ways, (*lead, ways * shots), generator=g),
        torch.randn(*lead, ways * queries, *x_shape, generator=g, dtype=torch.float64),
        torch.randint(0, ways, (*lead, ways * queries), generator=g),
    )


@pytest.fixture
def make_episode():
    """`random_episode` as a fixture: make_episode(seed, x_shape=(4,), ways=3, shots=2, queries=2, tasks)."""
    return random_episode


@pytest.fixture
def episode() -> Episode:
    """One 3-way 2-shot task with 2 queries per class on 4 features."""
    return random_episode(0)


@pytest.fixture
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(4, (5,), 3).double()


@pytest.fixture
def conv() -> torch.nn.Module:
    """A Conv4 with batch norm small enough for exact float64 checks on 8x8 images."""
    torch.manual_seed(0)
    return Conv4(out_features=3, hidden=4, image_size=8).double()


@pytest.fixture
def linear_task() -> tuple[torch.nn.Module, Episode]:
    """Noisy linear regression on 3 features with a linear model: every inner problem is convex."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(16, 1, generator=g, dtype=torch.float64)
    return torch.nn.Linear(3, 1).double(), Episode(x[:8], y[:8], x[8:], y[8:])


@pytest.fixture
def anil(monkeypatch):
    """The ANIL class of examples/anil.py (the "write your own algorithm" example)."""
    monkeypatch.syspath_prepend(str(REPO))  # `python train.py` has the repository root on sys.path
    from examples.anil import ANIL

    return ANIL
