"""MAML with second-order meta-gradients (Finn, Abbeel and Levine, 2017)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.func import jvp, vmap

from lightning_meta.algorithms.adaptation import INNER_HOOKS, overridden
from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params, axpy, detach
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.data.episode import Episode

# The MAML paper's Omniglot 5-way 1-shot setting: one SGD step at 0.4 in meta-training, three at evaluation.
MAML_INNER = InnerLoop(steps=1, lr=0.4)
MAML_EVAL_INNER = InnerLoop(steps=3, lr=0.4)


class MAML(MetaLearner):
    """MAML: k differentiable SGD steps on the support set; the meta-gradient is the full derivative of the
    query loss through the inner loop, d L_query(phi_k(theta)) / d theta, Hessian-vector terms included.

    The outer gradient wraps the whole per-task computation (inner `grad` steps included) and is taken inside
    the task vmap of `map_tasks`: differentiating through a vmap of inner gradients instead gives wrong
    meta-gradients with batch norm (docs/architecture.md, traps). Memory grows linearly with `inner.steps`, since
    every step's graph is kept for the backward pass; iMAML's does not.

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017.
    """

    second_order = True  # FOMAML: False

    def __init__(
        self, backbone: nn.Module, *, inner: InnerLoop = MAML_INNER, eval_inner: InnerLoop = MAML_EVAL_INNER,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(backbone, inner=inner, eval_inner=eval_inner, **kwargs)

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        def adapted_query_loss(theta: Params) -> tuple[Tensor, dict[str, Tensor]]:
            fast = self.inner_loop(theta, episode.support_x, episode.support_y, self.inner)  # differentiable
            return self.query_objective(fast, episode)

        return self.scaled_grad(adapted_query_loss, has_aux=True)(params)

    def splits_inner(self) -> bool:
        """MAML's own SGD inner loop: `task_gradients` differentiates it by hand on the split path, from the default
        inner-loop hooks, so a learner that overrides any of them (ANIL, BOIL, ProtoMAML, Meta-SGD's learned step
        sizes) or its `meta_gradient`, or adapts with Adam, takes the per-task loop instead."""
        changed = overridden(self, MAML, (*INNER_HOOKS, "meta_gradient"))
        return self.inner.optimizer == "sgd" and not changed

    def task_gradients(self, params: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        """As `meta_gradient` per task. On the "split" path (`batching=auto` on CPU with small support sets and
        large query sets, `splits_inner()`) the inner loops run in one vmap keeping their iterates phi_0..phi_k
        (no graph), and each task's query gradient g = grad L_query(phi_k) is taken one task at a time. MAML's
        meta-gradient then follows by hand, in reverse, in one vmap: g <- g - lr H_j g for j = k-1, ..., 0, with
        H_j the Hessian of step j's inner objective at phi_j (forward-over-reverse), i.e.
        d L_query(phi_k(theta)) / d theta with every Hessian term. The per-task loop holds one task's large query
        graph at a time, and the small support passes run batched (docs/performance.md)."""
        if self.batching_path(batch) != "split":
            return super().task_gradients(params, batch)
        loop = self.inner
        iterates = lambda p, x, y: [detach(fast) for fast, _ in self.inner_iterates(p, x, y, loop)]
        points = vmap(iterates, in_dims=(None, 0, 0), chunk_size=self.chunk_size)(params, *batch[:2])
        tasks = batch.support_x.shape[0]
        fixed = {k: v.expand(tasks, *v.shape) for k, v in params.items()}  # meta-parameters the loop leaves
        grads, metrics = self.query_gradients_per_task({**fixed, **points[-1]}, batch)

        def backward(points: list[Params], g: Params, x: Tensor, y: Tensor) -> Params:
            for j in reversed(range(loop.steps)):
                xb, yb = loop.batch(j, x, y)
                objective = lambda f, xb=xb, yb=yb: self.inner_objective({**params, **f}, params, xb, yb, loop)
                g = axpy(-loop.lr, jvp(self.scaled_grad(objective), (points[j],), (g,))[1], g)
            return g

        adapted = {k: grads[k] for k in points[-1]}
        moved = vmap(backward, chunk_size=self.chunk_size)(points[:-1], adapted, *batch[:2])
        return {**grads, **moved}, metrics
