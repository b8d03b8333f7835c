"""MAML with second-order meta-gradients (Finn, Abbeel and Levine, 2017)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params
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
