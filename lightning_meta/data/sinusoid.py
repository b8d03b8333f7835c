"""Sine-wave regression tasks (Finn et al., 2017, section 5.1); no files needed."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episode import Episode, TaskSource
from lightning_meta.errors import ConfigError


class SinusoidTasks:
    """y = A sin(x - phase), A ~ U[amplitude], phase ~ U[phase], x ~ U[x_range]; K support and Q query points.

    Shapes:
        support_x (K, 1), support_y (K, 1), query_x (Q, 1), query_y (Q, 1).
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    @staticmethod
    def _uniform(generator: torch.Generator, low_high: tuple[float, float], *shape: int) -> torch.Tensor:
        low, high = low_high
        return torch.rand(*shape, generator=generator) * (high - low) + low

    def sample_task(self, generator: torch.Generator, shots: int, queries: int) -> Episode:
        amplitude = self._uniform(generator, self.amplitude, 1)
        phase = self._uniform(generator, self.phase, 1)
        x = self._uniform(generator, self.x_range, shots + queries, 1)
        y = amplitude * torch.sin(x - phase)
        return Episode(x[:shots], y[:shots], x[shots:], y[shots:])


class SinusoidDataModule(EpisodicDataModule):
    """Sine-wave regression; the same task distribution for every split, told apart by the episode seed.

    Args:
        amplitude, phase, x_range: (low, high) of the uniform distributions of A, the phase and x.
        ways: always 1 (there are no classes); other arguments: see `EpisodicDataModule`.
    """

    task = "regression"
    target_features: ClassVar[int] = 1  # y is (K, 1): the network needs exactly one output

    def __init__(
        self,
        *,
        shots: int = 5,
        queries: int = 10,
        meta_batch_size: int = 25,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        ways: int = 1,
        **kwargs: Any,
    ) -> None:
        if ways != 1:
            raise ConfigError(f"data.ways={ways}: sine regression has no classes; leave data.ways at 1")
        super().__init__(ways=1, shots=shots, queries=queries, meta_batch_size=meta_batch_size, **kwargs)
        self.tasks = SinusoidTasks(tuple(amplitude), tuple(phase), tuple(x_range))

    def input_shape(self) -> tuple[int, ...]:
        return (1,)

    def build_sources(self) -> dict[str, TaskSource]:
        return {"train": self.tasks, "val": self.tasks, "test": self.tasks}
