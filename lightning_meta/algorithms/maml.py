"""MAML with second-order meta-gradients (Finn, Abbeel and Levine, 2017)."""

from __future__ import annotations

from torch import Tensor, nn

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
        super().__init__(
            backbone, task=task, inner_lr=inner_lr, inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps, inner_optimizer=inner_optimizer,
            inner_batch_size=inner_batch_size, eval_inner_lr=eval_inner_lr,
            eval_inner_batch_size=eval_inner_batch_size, lr=lr, lr_final=lr_final, optimizer=optimizer,
            batching=batching, chunk_size=chunk_size, transductive=transductive, grad_clip=grad_clip,
            eval_curve_steps=eval_curve_steps,
        )  # fmt: skip

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        def adapted_query_loss(theta: Params) -> tuple[Tensor, dict[str, Tensor]]:
            fast = self.inner_loop(theta, episode.support_x, episode.support_y)  # differentiable under grad
            return self.query_objective(fast, episode)

        return self.scaled_grad(adapted_query_loss, has_aux=True)(params)
