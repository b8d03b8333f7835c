"""Scoring and evaluation of a meta-learner: predict and score a task's queries, adapt to each evaluation task with
`eval_inner` (validation, test, adaptation curves), and `adapt()` for a single new task. A mixin of `MetaLearner`,
which supplies `inner_loop`, `map_tasks`, `params`, `loss` and the metric collections."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from lightning_meta.algorithms.functional import Params, loss_and_metric
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.algorithms.predictor import Predictor
from lightning_meta.data.episode import Episode
from lightning_meta.metrics import EpisodeMetrics


class Evaluation:
    """How `MetaLearner` scores queries (training's query loss too), its validation and test steps, and the
    adapt-and-predict API."""

    def predict(self, params: Params, support_x: Tensor, query_x: Tensor, transductive: bool | None = None) -> Tensor:
        """Outputs for the queries under fast weights; non-transductive mode sees each query with the support set
        only, so one query's prediction never depends on the others. `transductive` overrides the module's flag.

        Shapes:
            support_x (N*K, *x), query_x (N*Q, *x) -> (N*Q, out).
        """
        if self.transductive if transductive is None else transductive:
            return self(query_x, params)
        one = lambda q: self(torch.cat([support_x, q[None]]), params)[-1]
        return vmap(one)(query_x)

    def query_objective(self, fast: Params, episode: Episode, transductive: bool | None = None):
        """Query loss of fast weights, with detached (query_loss, query_metric) as the auxiliary output for
        `torch.func.grad(..., has_aux=True)`. Shapes: one task, query_x (N*Q, *x), query_y (N*Q,)."""
        out = self.predict(fast, episode.support_x, episode.query_x, transductive)
        loss, metric = loss_and_metric(out, episode.query_y, self.task)
        return loss, {"query_loss": loss.detach(), "query_metric": metric.detach()}

    def query_metrics(self, fast: Params, episode: Episode, transductive: bool | None = None) -> dict[str, Tensor]:
        """Query loss and metric of adapted weights (no gradient)."""
        with torch.no_grad():
            return self.query_objective(fast, episode, transductive)[1]

    def evaluate_task(self, params: Params, episode: Episode) -> dict[str, Tensor]:
        """Adapt with `eval_inner`, then score the queries; with `eval_curve_steps` also "curve", the query metric
        after each of those inner-step counts, shape (len(eval_curve_steps),)."""
        score = lambda loop: self.query_metrics(self.inner_loop(params, *episode[:2], loop), episode)
        out = score(self.eval_inner)
        if self.eval_curve_steps:
            points = [out if k == self.eval_inner.steps else score(self.eval_inner.replace(steps=k))
                      for k in self.eval_curve_steps]  # fmt: skip
            out["curve"] = torch.stack([point["query_metric"] for point in points])
        return out

    def _eval_step(self, batch: Episode, metrics: EpisodeMetrics) -> None:
        with torch.enable_grad():  # evaluation adapts; the Trainer must run with inference_mode=False
            out = self.map_tasks(self.evaluate_task, self.params(), batch)
        metrics.update(out["query_metric"].detach(), out["query_loss"].detach(), out.get("curve"))

    def validation_step(self, batch: Episode, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute_and_reset("val"), prog_bar=True, sync_dist=True)

    def test_step(self, batch: Episode, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute_and_reset("test"), sync_dist=True)

    # ----------------------------------------------------------------- adapt-and-predict API
    def adapt(self, support_x: Tensor, support_y: Tensor, loop: InnerLoop | None = None) -> Predictor:
        """Adapt a copy of the meta-weights to a new task with `loop` (default `eval_inner`, e.g.
        `learner.eval_inner.replace(steps=100)`); the meta-weights are left untouched.

        Shapes:
            support_x (N*K, *x), support_y (N*K,). The returned predictor maps (B, *x) -> (B, out).
        """
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        with torch.inference_mode(False), torch.enable_grad():
            fast = self.inner_loop(self.params(), support_x, support_y, loop or self.eval_inner)
        return Predictor(self, {k: v.detach() for k, v in fast.items()}, support_x)
