"""Review of evaluation: the adaptation curve and one adapted episode, at each validation/test, as figures for
every logger that takes images (TensorBoard, MLflow, W&B: `loggers.log_figure`).

Figures are rendered with matplotlib's Agg canvas (no pyplot, no display) and logged as images, so
TensorBoard's step slider walks through them over training; the scalars themselves (`val/acc_step5`, ...)
are logged by the learner. Only rank 0 draws, once per evaluation run, from the first episode of the first
batch (the same episode every time, since evaluation episodes are fixed by the seed).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_meta.data.episode import Episode
from lightning_meta.loggers import figure_loggers, log_figure, render
from lightning_meta.metrics import EpisodeMetrics

CORRECT, WRONG = (0.1, 0.75, 0.1), (0.9, 0.1, 0.1)


def image_grid(images: Tensor, columns: int, frame: int = 2, border: Tensor | None = None) -> Tensor:
    """Tile images row by row into one RGB grid: tile i is framed by `frame` pixels of colour `border[i]`
    (black without `border`), tiles are 1 white pixel apart, pixel values are scaled to [0, 1] over the grid.

    Shapes:
        images (B, C, H, W), C in {1, 3}; border (B, 3) -> (rows*(H+2*frame+1)+1, columns*(W+2*frame+1)+1, 3).
    """
    images = images.detach().float().cpu()
    low, high = images.amin(), images.amax()
    images = ((images - low) / (high - low).clamp_min(1e-8)).expand(-1, 3, -1, -1)
    count, _, height, width = images.shape
    cell_h, cell_w = height + 2 * frame + 1, width + 2 * frame + 1
    grid = torch.ones(3, -(-count // columns) * cell_h + 1, columns * cell_w + 1)
    for i in range(count):
        top, left = (i // columns) * cell_h + 1, (i % columns) * cell_w + 1
        cell = grid[:, top : top + cell_h - 1, left : left + cell_w - 1]
        cell[:] = 0.0 if border is None else border[i, :, None, None]
        cell[:, frame : frame + height, frame : frame + width] = images[i]
    return grid.permute(1, 2, 0)


def curve_figure(points: dict[int, tuple[float, float]], name: str, title: str):
    """The query metric (with its 95 % interval) against the number of inner steps at evaluation."""
    from matplotlib.figure import Figure

    steps = sorted(points)
    means, cis = [points[k][0] for k in steps], [points[k][1] for k in steps]
    figure = Figure(figsize=(4.5, 3.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    ax.errorbar(steps, means, yerr=cis, marker="o", capsize=3)
    for k, mean in zip(steps, means, strict=True):
        ax.annotate(f"{mean:.4g}", (k, mean), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set(xlabel="inner steps at evaluation", ylabel=name, title=title, xticks=steps)
    ax.grid(alpha=0.3)
    return figure


def classification_figure(episode: Episode, predicted: Tensor, max_images: int):
    """Support images labelled with their class; query images framed green (right) or red (wrong), labelled
    "predicted/true"."""
    from matplotlib.figure import Figure

    support_x, support_y = episode.support_x[:max_images], episode.support_y[:max_images]
    query_x, query_y = episode.query_x[:max_images], episode.query_y[:max_images]
    predicted = predicted[:max_images]
    columns = min(10, max(len(support_x), len(query_x)))
    right = (predicted == query_y).cpu()
    border = torch.where(right[:, None], torch.tensor(CORRECT), torch.tensor(WRONG))
    panels = [("support (label)", image_grid(support_x, columns), [str(int(y)) for y in support_y]),
              ("query (predicted/true)", image_grid(query_x, columns, border=border),
               [f"{int(p)}/{int(t)}" for p, t in zip(predicted, query_y, strict=True)])]  # fmt: skip
    heights = [grid.shape[0] for _, grid, _ in panels]
    figure = Figure(figsize=(columns * 0.6 + 0.4, sum(heights) / 40 + 0.8), dpi=100, layout="constrained")
    cell_h, cell_w = support_x.shape[-2] + 5, support_x.shape[-1] + 5  # image_grid's cell with frame=2
    for ax, (title, grid, labels) in zip(figure.subplots(2, 1, height_ratios=heights), panels, strict=True):
        ax.imshow(grid.numpy(), interpolation="nearest")
        for i, label in enumerate(labels):
            top, left = (i // columns) * cell_h, (i % columns) * cell_w
            ax.text(left + 4, top + 4, label, color="yellow", fontsize=6, va="top")
        if "query" in title:
            title = f"{title}, accuracy {right.float().mean():.0%}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return figure


def regression_figure(episode: Episode, grid_x: Tensor, adapted: Tensor, initial: Tensor):
    """Support points, query points, and the function before and after adaptation (1-D inputs)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 3.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    ax.plot(grid_x[:, 0], initial[:, 0], "--", color="grey", label="meta-initialisation")
    ax.plot(grid_x[:, 0], adapted[:, 0], color="tab:blue", label="adapted")
    ax.scatter(episode.query_x[:, 0], episode.query_y[:, 0], s=12, color="tab:green", label="query (true)")
    support_x, support_y = episode.support_x[:, 0], episode.support_y[:, 0]
    ax.scatter(support_x, support_y, s=30, marker="^", color="tab:red", label="support")
    ax.set(xlabel="x", ylabel="y")
    ax.legend(fontsize=7)
    return figure


def episode_figure(learner, episode: Episode, max_images: int = 20):
    """Adapt `learner` to one episode (meta-weights untouched) and draw it; None when the inputs are neither
    images (C, H, W) nor 1-D points."""
    predictor = learner.adapt(episode.support_x, episode.support_y)
    if episode.support_x.dim() == 4:
        return classification_figure(episode, predictor.classify(episode.query_x).cpu(), max_images)
    if episode.support_x.dim() == 2 and episode.support_x.shape[1] == 1 and learner.task == "regression":
        xs = torch.cat([episode.support_x, episode.query_x]).cpu()
        grid_x = torch.linspace(float(xs.min()), float(xs.max()), 200, dtype=xs.dtype)[:, None]  # 64-true: double
        with torch.no_grad():
            initial = learner(grid_x.to(learner.device)).cpu()
        return regression_figure(episode, grid_x, predictor(grid_x).cpu(), initial)
    return None


class EvaluationReview(pl.Callback):
    """Logs to every logger that takes images, at the end of each validation and test run, on rank 0 only:
    `<stage>/adaptation_curve`, the query metric against inner steps (the learner's `eval_curve_steps` and
    `eval_inner.steps`), and `<stage>/episode`, the first evaluation episode adapted and predicted.

    Args:
        max_images: support and query images drawn at most (each).
    """

    def __init__(self, max_images: int = 20) -> None:
        self.max_images = max_images
        self._episode: Episode | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep(trainer, batch, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep(trainer, batch, batch_idx)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._log(trainer, pl_module, "test")

    def _keep(self, trainer: pl.Trainer, batch: Episode, batch_idx: int) -> None:
        if batch_idx == 0 and trainer.is_global_zero:
            self._episode = Episode(*(field[0].detach().cpu() for field in batch))  # one task

    def _log(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        loggers = figure_loggers(trainer.loggers)
        if not trainer.is_global_zero or not loggers:
            return
        images = {}
        curve = self.curve_points(trainer.callback_metrics, pl_module, stage)
        if len(curve) > 1:
            name = f"{stage}/{EpisodeMetrics.metric_name(pl_module.task)}"
            title = f"{name} after {trainer.global_step} meta-iterations"
            images["adaptation_curve"] = render(curve_figure(curve, name, title))
        if self._episode is not None:
            figure = episode_figure(pl_module, self._episode, self.max_images)
            if figure is not None:
                images["episode"] = render(figure)
        for tag, image in images.items():
            log_figure(loggers, f"{stage}/{tag}", image, trainer.global_step)
        self._episode = None

    @staticmethod
    def curve_points(metrics: dict, pl_module, stage: str) -> dict[int, tuple[float, float]]:
        """{inner steps: (mean, ci95)} from the logged `<stage>/<metric>_step<K>` and `<stage>/<metric>`."""
        name = f"{stage}/{EpisodeMetrics.metric_name(pl_module.task)}"
        keys = {k: f"{name}_step{k}" for k in pl_module.eval_curve_steps}
        keys[pl_module.eval_inner.steps] = name
        return {k: (float(metrics[key]), float(metrics.get(f"{key}_ci95", 0.0))) for k, key in keys.items()
                if key in metrics}  # fmt: skip
