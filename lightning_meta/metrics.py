"""Per-episode evaluation metrics: the mean and 95 % confidence interval over episodes, DDP-reduced."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) over episodes (population std, as in the MAML and Reptile evaluation)."""
    values = values.double().flatten()
    if values.numel() == 0:
        return float("nan"), float("nan")
    std = values.std(unbiased=False) if values.numel() > 1 else values.new_zeros(())
    return float(values.mean()), float(1.96 * std / math.sqrt(values.numel()))


class EpisodeMetrics(nn.Module):
    """Collects one value per evaluation episode; `CatMetric` gathers them from every DDP rank at compute
    time, so a 2-process run reports the figures of a 1-process run.

    An episode whose loss or metric is NaN or inf after adaptation (a diverged inner loop) is counted in
    `<stage>/nonfinite_episodes` and left out of the mean and interval, which are then over the finite ones;
    `<stage>/episodes` counts all. (torchmetrics' default `nan_strategy="warn"` would drop NaNs from the metric
    and the loss separately, with only a warning; "disable" keeps them so they can be counted here.)

    Args:
        task: "classification" (accuracy and loss) or "regression" (MSE).
        curve_steps: inner-step counts of the adaptation curve; each gets `<stage>/<metric>_step<K>` (+ CI).
    """

    def __init__(self, task: str, curve_steps: Sequence[int] = ()) -> None:
        super().__init__()
        self.task = task
        self.metric = CatMetric(nan_strategy="disable")
        self.loss = CatMetric(nan_strategy="disable")
        self.curve_steps = tuple(curve_steps)
        self.curve = nn.ModuleList(CatMetric(nan_strategy="disable") for _ in self.curve_steps)

    @staticmethod
    def metric_name(task: str) -> str:
        return "acc" if task == "classification" else "mse"

    def update(self, metric: Tensor, loss: Tensor, curve: Tensor | None = None) -> None:
        """Shapes: metric (T,), loss (T,): one value per episode; curve (T, len(curve_steps)) or None."""
        self.metric.update(metric.float())
        self.loss.update(loss.float())
        for i, values in enumerate(self.curve):
            values.update(curve[:, i].float())

    def compute_and_reset(self, stage: str) -> dict[str, float]:
        name = self.metric_name(self.task)
        values = {}
        if self.metric.update_count:
            episodes = torch.atleast_1d(self.metric.compute())
            losses = torch.atleast_1d(self.loss.compute())
            finite = torch.isfinite(episodes) & torch.isfinite(losses)
            values = {
                **self._summary(stage, name, episodes[finite]),
                f"{stage}/episodes": float(episodes.numel()),
                f"{stage}/nonfinite_episodes": float((~finite).sum()),
            }
            if self.task == "classification":
                values[f"{stage}/loss"] = float(losses[finite].double().mean())
            for k, curve in zip(self.curve_steps, self.curve, strict=True):
                points = torch.atleast_1d(curve.compute())
                values.update(self._summary(stage, f"{name}_step{k}", points[finite & torch.isfinite(points)]))
        for metric in (self.metric, self.loss, *self.curve):
            metric.reset()
        return values

    @staticmethod
    def _summary(stage: str, name: str, values: Tensor) -> dict[str, float]:
        mean, ci = mean_ci95(values)
        return {f"{stage}/{name}": mean, f"{stage}/{name}_ci95": ci}
