"""MetaLearner: the meta-training loop every gradient-based meta-learner shares.

Adapt fast weights to each task's support set (`inner_loop`), turn the result into a meta-gradient for the initial
weights (`meta_gradient`), average over the meta-batch, and hand the average to Lightning through a surrogate loss
so that DDP all-reduces it, precision plugins scale it and `clip_gradients` clips it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_meta.algorithms.functional import Params, adam_step, batch_indices, loss_and_metric, sgd_step
from lightning_meta.algorithms.predictor import Predictor
from lightning_meta.algorithms.scaling import check_trainer, scaled_grad
from lightning_meta.data.episode import Episode
from lightning_meta.metrics import EpisodeMetrics

TaskFn = Callable[[Params, Episode], tuple]


class MetaLearner(pl.LightningModule):
    """Base class: subclasses override `meta_gradient` (and `inner_loop` when adaptation differs).

    Args:
        backbone: a plain `nn.Module` (e.g. `Conv4`, `MLP`); its parameters are the meta-learned initialisation.
        task: "classification" (cross-entropy, accuracy) or "regression" (MSE).
        inner_lr: inner-loop step size.
        inner_steps: inner-loop steps in meta-training.
        eval_inner_steps: inner-loop steps when evaluating (Reptile: 50; MAML: 3 or 10).
        inner_optimizer: "sgd", or "adam" (beta1 = 0, fresh per task) as in the Reptile paper.
        inner_batch_size: support examples per inner step (None: the whole support set). Reptile: 10.
        eval_inner_lr: inner step size at evaluation (None: `inner_lr`).
        eval_inner_batch_size: support examples per evaluation step (None: the whole support set).
        lr: outer learning rate (Reptile: the meta step size epsilon).
        lr_final: anneal `lr` linearly to this value over `trainer.max_steps` (None: constant).
        optimizer: outer optimizer, "adam" or "sgd" (Reptile's outer update is SGD on theta - phi).
        batching: "vmap" runs the meta-batch as one vmap over tasks, "loop" one task at a time. Equal results;
            "vmap" is faster for small per-task batches, "loop" for large ones and uses far less memory.
        chunk_size: tasks per vmap chunk (None: all at once) to bound memory.
        transductive: predict the query set as one batch (batch-norm statistics from the queries, the papers'
            setting); False predicts each query together with the support set only (Reptile's definition).
        grad_clip: clip the meta-gradient to this norm (None: no clipping).
        eval_curve_steps: also score the query set after each of these inner-step counts at evaluation,
            logged as `val/<metric>_step<K>` and `test/<metric>_step<K>` (the MAML sine protocol: [1, 5, 10]).
            None: no curve, no cost. Each count re-runs the inner loop: sum(K) more steps per task.
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: str = "classification",
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int = 3,
        inner_optimizer: str = "sgd",
        inner_batch_size: int | None = None,
        eval_inner_lr: float | None = None,
        eval_inner_batch_size: int | None = None,
        lr: float = 1e-3,
        lr_final: float | None = None,
        optimizer: str = "adam",
        batching: str = "vmap",
        chunk_size: int | None = None,
        transductive: bool = True,
        grad_clip: float | None = None,
        eval_curve_steps: list[int] | None = None,
    ) -> None:
        super().__init__()
        choices = dict(task=(task, ("classification", "regression")),
                       inner_optimizer=(inner_optimizer, ("sgd", "adam")),
                       optimizer=(optimizer, ("adam", "sgd")), batching=(batching, ("vmap", "loop")))  # fmt: skip
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"algorithm.{name}={value!r}; choose one of {', '.join(allowed)}")
        if inner_steps < 0 or eval_inner_steps < 0:
            raise ValueError("algorithm.inner_steps and algorithm.eval_inner_steps must be 0 or more")
        if any(int(k) != k or k < 0 for k in eval_curve_steps or ()):
            raise ValueError(f"algorithm.eval_curve_steps={eval_curve_steps}; give inner-step counts >= 0")
        self.save_hyperparameters(ignore=["backbone"])
        self.automatic_optimization = False
        self.backbone = backbone
        self.task = task
        self.inner_lr, self.inner_steps, self.eval_inner_steps = inner_lr, inner_steps, eval_inner_steps
        self.inner_optimizer, self.inner_batch_size = inner_optimizer, inner_batch_size
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr
        self.eval_inner_batch_size = eval_inner_batch_size
        self.lr, self.lr_final, self.optimizer_name = lr, lr_final, optimizer
        self.batching, self.chunk_size = batching, chunk_size
        self.transductive, self.grad_clip = transductive, grad_clip
        self.eval_curve_steps = tuple(int(k) for k in eval_curve_steps or ())
        self.val_metrics = EpisodeMetrics(task, self.eval_curve_steps)
        self.test_metrics = EpisodeMetrics(task, self.eval_curve_steps)

    # Whether the algorithm is correct under bf16-mixed/16-mixed; `check_trainer` refuses it otherwise.
    mixed_precision: bool = True
    mixed_precision_note: str = ""
    # Static loss scale of the per-task functional gradients under 16-mixed; see algorithms/scaling.py.
    inner_loss_scale: float = 2.0**10

    def setup(self, stage: str) -> None:
        check_trainer(self.trainer, self)  # train.py checks before fit already; this covers any other Trainer

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning loads the weights before its precision plugin converts the module (64-true: to float64), so
        # a float64 checkpoint would be rounded through float32 on resume. Convert first (Lightning's own
        # conversion is then a no-op).
        if self._trainer is not None:
            self.trainer.precision_plugin.convert_module(self)

    # ----------------------------------------------------------------- functional building blocks
    def params(self) -> Params:
        """The meta-parameters theta as detached tensors (the functional inner loop differentiates them itself)."""
        return {name: p.detach() for name, p in self.backbone.named_parameters()}

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """The backbone with `params` (default: the meta-parameters). Shapes: x (B, *x) -> (B, out)."""
        if params is None:
            return self.backbone(x)
        return functional_call(self.backbone, params, (x,))

    def loss(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, metric) of `params` on a batch; the metric is accuracy or MSE."""
        return loss_and_metric(self(x, params), y, self.task)

    def scaled_grad(self, fn: Callable, has_aux: bool = False) -> Callable:
        """`torch.func.grad(fn)` for per-task losses: under 16-mixed the loss is scaled by `inner_loss_scale`
        and the gradient unscaled in fp32 (exact, second-order safe); otherwise plain `grad`."""
        trainer_precision = getattr(self._trainer, "precision", None)
        return scaled_grad(fn, self.inner_loss_scale if trainer_precision == "16-mixed" else 1.0, has_aux)

    def inner_objective(self, phi: Params, theta: Params, x: Tensor, y: Tensor, evaluation: bool = False) -> Tensor:
        """What the inner loop minimises on a support batch: the support loss (iMAML adds a proximal term)."""
        return self.loss(phi, x, y)[0]

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, evaluation: bool = False) -> Params:
        """Adapt `params` to one task's support set by steps on `inner_objective`; returns the fast weights phi. No
        graph is kept between steps unless the caller differentiates through it (MAML runs this under
        `torch.func.grad`).

        Shapes:
            support_x (N*K, *x), support_y (N*K,).
        """
        steps = self.eval_inner_steps if evaluation else self.inner_steps
        lr = self.eval_inner_lr if evaluation else self.inner_lr
        batch_size = self.eval_inner_batch_size if evaluation else self.inner_batch_size
        objective = lambda phi, x, y: self.inner_objective(phi, params, x, y, evaluation)
        phi, state = params, (0, {k: torch.zeros_like(v) for k, v in params.items()})
        for step in range(steps):
            idx = batch_indices(step, batch_size, support_x.shape[0])
            x, y = (support_x, support_y) if idx is None else (support_x[idx], support_y[idx])
            grads = self.scaled_grad(objective)(phi, x, y)
            if self.inner_optimizer == "adam":
                phi, state = adam_step(phi, grads, state, lr)
            else:
                phi = sgd_step(phi, grads, lr)
        return phi

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

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        """For one task: the meta-gradient w.r.t. `params` and logging metrics (query_loss, query_metric)."""
        raise NotImplementedError

    def query_objective(
        self, fast: Params, episode: Episode, transductive: bool | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Query loss of fast weights, with detached (query_loss, query_metric) as the auxiliary output for
        `torch.func.grad(..., has_aux=True)`.

        Shapes:
            episode: one task, support_x (N*K, *x), query_x (N*Q, *x), query_y (N*Q,).
        """
        out = self.predict(fast, episode.support_x, episode.query_x, transductive)
        loss, metric = loss_and_metric(out, episode.query_y, self.task)
        return loss, {"query_loss": loss.detach(), "query_metric": metric.detach()}

    def query_metrics(self, fast: Params, episode: Episode, transductive: bool | None = None) -> dict[str, Tensor]:
        """Query loss and metric of adapted weights (no gradient)."""
        with torch.no_grad():
            return self.query_objective(fast, episode, transductive)[1]

    def evaluate_task(self, params: Params, episode: Episode) -> dict[str, Tensor]:
        """Adapt with the evaluation settings, then score the query set; with `eval_curve_steps` also "curve",
        the query metric after each of those inner-step counts, shape (len(eval_curve_steps),)."""
        out = self.query_metrics(self.inner_loop(params, episode.support_x, episode.support_y, True), episode)
        if self.eval_curve_steps:
            points = [self._curve_point(k, params, episode, out) for k in self.eval_curve_steps]
            out["curve"] = torch.stack(points)
        return out

    def _curve_point(self, steps: int, params: Params, episode: Episode, final: dict[str, Tensor]) -> Tensor:
        """Query metric after `steps` evaluation steps: `inner_loop` re-run with `eval_inner_steps` set to
        `steps` for the call, so any algorithm's own inner loop (iMAML's proximal one too) yields a curve."""
        if steps == self.eval_inner_steps:
            return final["query_metric"]
        saved, self.eval_inner_steps = self.eval_inner_steps, steps
        try:
            fast = self.inner_loop(params, episode.support_x, episode.support_y, True)
        finally:
            self.eval_inner_steps = saved
        return self.query_metrics(fast, episode)["query_metric"]

    def map_tasks(self, fn: TaskFn, params: Params, batch: Episode):
        """Apply a per-task function over the leading task dimension; outputs are stacked on dim 0.

        The vmap path takes the outer gradient *inside* the vmap (exact even with batch norm; differentiating
        through a vmap of inner `grad` calls is not, see ARCHITECTURE.md traps).
        """
        if self.batching == "vmap":
            return vmap(fn, in_dims=(None, 0), chunk_size=self.chunk_size)(params, batch)
        outs = [fn(params, Episode(*(f[t] for f in batch))) for t in range(batch.support_x.shape[0])]
        return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: Episode, batch_idx: int) -> Tensor:
        grads, metrics = self.map_tasks(self.meta_gradient, self.params(), batch)
        mean_grads = {k: g.mean(0) for k, g in grads.items()}
        lr = self.optimizers().param_groups[0]["lr"]  # this step's lr; apply_meta_gradient steps the schedule
        self.apply_meta_gradient(mean_grads)
        loss, metric = metrics["query_loss"].mean(), metrics["query_metric"].mean()
        log = dict(prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.support_x.shape[0])
        self.log("train/query_loss", loss, **log)
        self.log(f"train/query_{EpisodeMetrics.metric_name(self.task)}", metric, **log)
        self.log("train/lr", lr, on_step=True, on_epoch=False)
        return loss

    def apply_meta_gradient(self, meta_grad: Params) -> None:
        """One outer step with `meta_grad` as the gradient, routed through `manual_backward` (DDP, AMP, clipping)."""
        opt = self.optimizers()
        opt.zero_grad()
        surrogate = sum((p * meta_grad[n].detach().to(p.dtype)).sum() for n, p in self.backbone.named_parameters())
        self.manual_backward(surrogate)
        opt.step()  # clips in `on_before_optimizer_step`
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this inside opt.step(): after manual_backward, so DDP has all-reduced the
        # meta-gradient, and after the GradScaler unscaled it under 16-mixed (before, it is still scaled).
        if self.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    # ----------------------------------------------------------------- evaluation
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
    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor:
        """Adapt a copy of the meta-weights to a new task with the evaluation settings (`eval_inner_steps`, ...);
        the meta-weights are left untouched.

        Shapes:
            support_x (N*K, *x), support_y (N*K,). The returned predictor maps (B, *x) -> (B, out).
        """
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        with torch.inference_mode(False), torch.enable_grad():
            fast = self.inner_loop(self.params(), support_x, support_y, evaluation=True)
        return Predictor(self, {k: v.detach() for k, v in fast.items()}, support_x)

    # ----------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        params = self.backbone.parameters()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr)
        else:
            opt = torch.optim.Adam(params, lr=self.lr)
        if self.lr_final is None:
            return opt
        total = max(int(self.trainer.max_steps), 1)
        final = self.lr_final / self.lr if self.lr else 0.0
        anneal = lambda step: 1.0 - (1.0 - final) * min(step / total, 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, anneal)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
