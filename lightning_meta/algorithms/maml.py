"""MAML with second-order meta-gradients (Finn, Abbeel and Levine, 2017)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.func import jvp, vmap

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
    meta-gradients with batch norm (ARCHITECTURE.md, Traps). Memory grows linearly with `inner.steps`, since
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
        """MAML itself with SGD inner steps: `task_gradients` differentiates that loop by hand on the split path
        (a subclass's hooks, Meta-SGD's learned step sizes or an Adam inner loop take the per-task loop)."""
        return type(self) is MAML and self.inner.optimizer == "sgd"

    def task_gradients(self, params: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        """As `meta_gradient` per task. On the "split" path (`batching=auto` on CPU with small support sets and
        large query sets, `splits_inner()`) the inner loops run in one vmap keeping their iterates phi_0..phi_k
        (no graph), and each task's query gradient g = grad L_query(phi_k) is taken one task at a time. That is
        FOMAML's meta-gradient; MAML's then follows by hand, in reverse, in one vmap: g <- g - lr H_j g for
        j = k-1, ..., 0, with H_j the Hessian of step j's support loss at phi_j (forward-over-reverse), i.e.
        d L_query(phi_k(theta)) / d theta with every Hessian term. The per-task loop holds one task's large query
        graph at a time, and the small support passes run batched (15 queries per class, 2-core CPU, train.py:
        FOMAML 531 -> 468 ms, MAML 746 -> 594 ms per meta-iteration; README, Performance)."""
        if self.batching_path(batch) != "split":
            return super().task_gradients(params, batch)
        loop, first_order = self.inner, not self.second_order
        kept = slice(-1, None) if first_order else slice(None)  # FOMAML needs the last iterate only
        iterates = lambda p, x, y: [detach(fast) for fast, _ in self.inner_iterates(p, x, y, loop)][kept]
        path = vmap(iterates, in_dims=(None, 0, 0), chunk_size=self.chunk_size)(params, *batch[:2])
        grads, metrics = self.query_gradients_per_task(path[-1], batch)
        if first_order:
            return grads, metrics

        def backward(points: list[Params], g: Params, x: Tensor, y: Tensor) -> Params:
            for j in reversed(range(loop.steps)):
                xb, yb = loop.batch(j, x, y)
                support_grad = self.scaled_grad(lambda f, xb=xb, yb=yb: self.loss(f, xb, yb)[0])
                g = axpy(-loop.lr, jvp(support_grad, (points[j],), (g,))[1], g)
            return g

        return vmap(backward, chunk_size=self.chunk_size)(path[:-1], grads, *batch[:2]), metrics
