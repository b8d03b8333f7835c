"""MAML with second-order meta-gradients (Finn, Abbeel and Levine, 2017)."""

from __future__ import annotations

from torch import Tensor

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params
from lightning_meta.data.episode import Episode


class MAML(MetaLearner):
    """MAML: k differentiable SGD steps on the support set; the meta-gradient is the full derivative of the
    query loss through the inner loop, d L_query(phi_k(theta)) / d theta, Hessian-vector terms included.

    The outer gradient wraps the whole per-task computation (inner `grad` steps included) and is taken inside
    the task vmap of `map_tasks`: differentiating through a vmap of inner gradients instead gives wrong
    meta-gradients with batch norm (ARCHITECTURE.md, Traps). Memory grows linearly with `inner_steps`, since
    every step's graph is kept for the backward pass; iMAML's does not.

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017.
    """

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        def adapted_query_loss(theta: Params) -> tuple[Tensor, dict[str, Tensor]]:
            fast = self.inner_loop(theta, episode.support_x, episode.support_y)  # differentiable under grad
            return self.query_objective(fast, episode)

        return self.scaled_grad(adapted_query_loss, has_aux=True)(params)
