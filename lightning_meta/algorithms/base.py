"""MetaLearner: the meta-training loop every gradient-based meta-learner shares.

Adapt fast weights to each task's support set (the hooks of `Adaptation`, driven by an `InnerLoop` value), turn the
result into a meta-gradient for the meta-parameters (`meta_gradient`), average over the meta-batch, and hand the
average to Lightning through a surrogate loss so that DDP all-reduces it, precision plugins scale it and
`clip_gradients` clips it; one step of the `OuterLoop`'s optimizer follows. docs/architecture.md gives the design.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.algorithms import batching as paths
from lightning_meta.algorithms.adaptation import Adaptation
from lightning_meta.algorithms.batching import PATHS
from lightning_meta.algorithms.evaluation import Evaluation
from lightning_meta.algorithms.functional import Params, loss_and_metric
from lightning_meta.algorithms.inner import InnerLoop, declared_default, settings_from
from lightning_meta.algorithms.outer import OuterLoop
from lightning_meta.algorithms.scaling import check_trainer, scaled_grad
from lightning_meta.compat import attached_trainer
from lightning_meta.data.episode import Episode
from lightning_meta.errors import CheckpointError, ConfigError
from lightning_meta.metrics import EpisodeMetrics

TaskFn = Callable[[Params, Episode], tuple]
DEFAULT_INNER = InnerLoop()  # one SGD step at 0.01; each algorithm sets its paper's
DEFAULT_OUTER = OuterLoop()  # Adam at 1e-3


class MetaLearner(Adaptation, Evaluation, pl.LightningModule):
    """Base class: subclasses override `meta_gradient`, and the inner-loop hooks of `Adaptation` (`adapts`,
    `inner_lr`, `inner_objective`, `initial_state`, `inner_iterates`/`inner_trajectory`) where adaptation differs.

    The meta-parameters are the backbone's parameters (named as in the backbone) plus any `nn.Parameter` the
    subclass registers on itself (named by module path, e.g. Meta-SGD's `inner_lrs.<name>`): all are in
    `params()`, receive a meta-gradient, are saved, all-reduced and clipped alike.

    Args:
        backbone: a plain `nn.Module` (e.g. `Conv4`, `MLP`).
        task: "classification" (cross-entropy, accuracy) or "regression" (MSE).
        inner: the inner loop of meta-training: an `InnerLoop`, or a dict of its fields (those left out keep the
            class's default).
        eval_inner: the inner loop at evaluation, likewise (None: `inner`).
        outer: the outer loop (learning rate, its annealing, optimizer, meta-gradient clipping): an `OuterLoop`,
            or a dict of its fields.
        batching: "vmap" runs the meta-batch as one vmap over tasks, "loop" one task at a time (equal results;
            "loop" uses far less memory), "auto" (default) picks per call from the per-task batch sizes, see
            algorithms/batching.py.
        chunk_size: tasks per vmap chunk (None: all at once) to bound memory.
        transductive: predict the query set as one batch (batch-norm statistics from the queries, the papers'
            setting); False predicts each query together with the support set only (Reptile's definition).
        eval_curve_steps: also score the queries after each of these inner-step counts at evaluation, logged as
            `val/<metric>_step<K>`, `test/<metric>_step<K>` (MAML's sine protocol: [1, 5, 10]).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: str = "classification",
        inner: InnerLoop = DEFAULT_INNER,
        eval_inner: InnerLoop | None = None,
        outer: OuterLoop = DEFAULT_OUTER,
        batching: str = "auto",
        chunk_size: int | None = None,
        transductive: bool = True,
        eval_curve_steps: list[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value, allowed in (("task", task, ("classification", "regression")), ("batching", batching, PATHS)):
            if value not in allowed:
                raise ConfigError(f"algorithm.{name}={value!r}; choose one of {', '.join(allowed)}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"algorithm.chunk_size={chunk_size}; use null (all tasks at once) or 1 or more")
        if any(int(k) != k or k < 0 for k in eval_curve_steps or ()):
            raise ConfigError(f"algorithm.eval_curve_steps={eval_curve_steps}; give inner-step counts >= 0")
        self.save_hyperparameters(ignore=["backbone"])
        self.automatic_optimization = False
        self.backbone, self.task = backbone, task
        self.inner = settings_from(inner, declared_default(type(self), "inner"), "inner")
        eval_default = declared_default(type(self), "eval_inner") or self.inner
        self.eval_inner = settings_from(self.inner if eval_inner is None else eval_inner, eval_default, "eval_inner")
        self.outer = settings_from(outer, declared_default(type(self), "outer"), "outer")
        # Checkpoints hold plain containers (they load with weights_only=True).
        self.hparams.update(inner=asdict(self.inner), eval_inner=asdict(self.eval_inner), outer=asdict(self.outer))
        self.batching, self.chunk_size, self.transductive = batching, chunk_size, transductive
        self.eval_curve_steps = tuple(int(k) for k in eval_curve_steps or ())
        self.val_metrics = EpisodeMetrics(task, self.eval_curve_steps)
        self.test_metrics = EpisodeMetrics(task, self.eval_curve_steps)
        self._backbone_names = tuple(name for name, _ in backbone.named_parameters())

    mixed_precision: bool = True  # correct under bf16-mixed/16-mixed? `check_trainer` refuses it otherwise
    mixed_precision_note: str = ""
    inner_loss_scale: float = 2.0**10  # static loss scale of per-task gradients under 16-mixed (scaling.py)

    def setup(self, stage: str) -> None:
        check_trainer(self.trainer, self)  # train.py checks before fit already; this covers any other Trainer

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning loads the weights before its precision plugin converts the module (64-true: to float64), so
        # a float64 checkpoint would be rounded through float32 on resume. Convert first.
        if attached_trainer(self) is not None:
            self.trainer.precision_plugin.convert_module(self)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **overrides: str):
        """A learner from a train.py checkpoint, backbone included: rebuilt from the run's saved config (with
        `overrides` as `dotted.key=value` strings, e.g. `**{"algorithm.eval_inner.steps": "100"}`), weights loaded.
        Works from any algorithm class; the checkpoint's own must be `cls` or a subclass of it."""
        from lightning_meta.build import load_learner  # build reaches the algorithms through `_target_` only

        learner = load_learner(checkpoint_path, [f"{k}={v}" for k, v in overrides.items()])
        if not isinstance(learner, cls):
            raise CheckpointError(f"{checkpoint_path} holds a {type(learner).__name__}, not a {cls.__name__}")
        return learner.to(map_location) if map_location is not None else learner

    # ----------------------------------------------------------------- functional building blocks
    def meta_parameters(self) -> dict[str, nn.Parameter]:
        """The learned meta-parameters: the backbone's by their own names, the learner's others by module path."""
        own = {n: p for n, p in self.named_parameters() if not n.startswith("backbone.")}
        return {**dict(self.backbone.named_parameters()), **own}

    def params(self) -> Params:
        """The meta-parameters as detached tensors (the functional code differentiates them itself)."""
        return {name: p.detach() for name, p in self.meta_parameters().items()}

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """The backbone with `params` (default: the meta-parameters). Shapes: x (B, *x) -> (B, out)."""
        if params is None:
            return self.backbone(x)
        if len(params) != len(self._backbone_names):
            params = {k: params[k] for k in self._backbone_names}
        return functional_call(self.backbone, params, (x,))

    def loss(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, metric) of `params` on a batch; the metric is accuracy or MSE."""
        return loss_and_metric(self(x, params), y, self.task)

    def scaled_grad(self, fn: Callable, has_aux: bool = False) -> Callable:
        """`torch.func.grad(fn)` for per-task losses: under 16-mixed the loss is scaled by `inner_loss_scale`
        and the gradient unscaled in fp32 (exact, second-order safe); otherwise plain `grad`."""
        trainer_precision = getattr(attached_trainer(self), "precision", None)
        return scaled_grad(fn, self.inner_loss_scale if trainer_precision == "16-mixed" else 1.0, has_aux)

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        """For one task: (the meta-gradient w.r.t. every entry of `params`, {"query_loss", "query_metric"})."""
        raise NotImplementedError

    # ----------------------------------------------------------------- batching paths
    def map_tasks(self, fn: TaskFn, params: Params, batch: Episode):
        """A per-task function over the leading task dimension, outputs stacked on dim 0, by the path `batching`
        resolves to for this batch; the outer gradient is taken inside the per-task function on every path."""
        path = self.batching_path(batch)
        if path == "split":  # only `task_gradients` splits; any other function takes what the sizes say without it
            path = paths.resolve(self.batching, batch, examples=self.vmap_examples(batch))
        return paths.map_tasks(fn, params, batch, path, self.chunk_size)

    def batching_path(self, batch: Episode) -> str:
        """The path `batching` resolves to for this meta-batch: "vmap", "loop" or "split" (algorithms/batching.py)."""
        low = getattr(attached_trainer(self), "precision", "32-true") in ("16-mixed", "bf16-mixed")
        return paths.resolve(self.batching, batch, low, self.vmap_examples(batch), self.splits_inner())

    def splits_inner(self) -> bool:
        """Whether `batching=auto` may take the "split" path: only a learner whose `task_gradients` implements
        it for its own hooks says yes (FOMAML, MAML with SGD steps, iMAML)."""
        return False

    def vmap_examples(self, batch: Episode) -> int:
        """The per-task batch size by which `batching=auto` chooses vmap or the loop on CPU: the larger of the
        support and query sets, each of which passes through per-task weights about equally often."""
        return paths.per_task_examples(batch)

    # ----------------------------------------------------------------- training
    def task_gradients(self, params: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        """Per-task meta-gradients and metrics of a meta-batch, stacked on dim 0."""
        return self.map_tasks(self.meta_gradient, params, batch)

    def training_step(self, batch: Episode, batch_idx: int) -> Tensor | None:
        grads, metrics = self.task_gradients(self.params(), batch)
        lr = self.optimizers().param_groups[0]["lr"]  # this step's lr; apply_meta_gradient steps the schedule
        self.apply_meta_gradient({k: g.mean(0) for k, g in grads.items()})
        self.log("train/lr", lr, on_step=True, on_epoch=False)
        if not metrics:  # a learner that scores its queries for the log alone skips steps whose log is not written
            return None
        loss, metric = metrics["query_loss"].mean(), metrics["query_metric"].mean()
        log = dict(prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.support_x.shape[0])
        self.log("train/query_loss", loss, **log)
        self.log(f"train/query_{EpisodeMetrics.metric_name(self.task)}", metric, **log)
        return loss

    def apply_meta_gradient(self, meta_grad: Params) -> None:
        """One outer step with `meta_grad` as the gradient, routed through `manual_backward` (DDP, AMP, clipping)."""
        opt = self.optimizers()
        opt.zero_grad()
        named = self.meta_parameters().items()
        self.manual_backward(sum((p * meta_grad[n].detach().to(p.dtype)).sum() for n, p in named))
        opt.step()  # clips in `on_before_optimizer_step`
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Inside opt.step(): after DDP all-reduced the meta-gradient and the 16-mixed GradScaler unscaled it.
        if self.outer.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.outer.grad_clip, gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        progress = self.outer.progress(self.trainer) if self.outer.lr_final is not None else None
        return self.outer.configure(list(self.meta_parameters().values()), progress)
