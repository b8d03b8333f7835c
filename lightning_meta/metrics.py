"""Per-episode evaluation metrics: the mean and 95 % confidence interval over episodes, DDP-reduced."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) over episodes (population std, as the MAML and Reptile evaluation code)."""
    values = values.double().flatten()
    if values.numel() == 0:
        return float("nan"), float("nan")
    std = values.std(unbiased=False) if values.numel() > 1 else values.new_zeros(())
    return float(values.mean()), float(1.96 * std / math.sqrt(values.numel()))


class EpisodeMetrics(nn.Module):
    """Collects one value per evaluation episode; `CatMetric` gathers them from every DDP rank at compute time,
    so a 2-process run reports the figures of a 1-process run."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task
        self.metric = CatMetric()
        self.loss = CatMetric()

    @staticmethod
    def metric_name(task: str) -> str:
        return "acc" if task == "classification" else "mse"

    def update(self, metric: Tensor, loss: Tensor) -> None:
        """Shapes: metric (T,), loss (T,): one value per episode."""
        self.metric.update(metric.float())
        self.loss.update(loss.float())

    def compute_and_reset(self, stage: str) -> dict[str, float]:
        name = self.metric_name(self.task)
        values = {}
        if self.metric.update_count:
            values = self._summary(stage, name, torch.atleast_1d(self.metric.compute()))
            if self.task == "classification":
                values[f"{stage}/loss"] = float(torch.atleast_1d(self.loss.compute()).double().mean())
        self.metric.reset()
        self.loss.reset()
        return values

    @staticmethod
    def _summary(stage: str, name: str, values: Tensor) -> dict[str, float]:
        mean, ci = mean_ci95(values)
        return {f"{stage}/{name}": mean, f"{stage}/{name}_ci95": ci, f"{stage}/episodes": float(values.numel())}
