"""Reptile (Nichol, Achiam and Schulman, 2018)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params, subtract
from lightning_meta.data.episode import Episode


class Reptile(MetaLearner):
    """Reptile: k inner steps on support mini-batches; the meta-gradient is theta - phi_k.

    With outer SGD at lr epsilon (the meta step size, annealed linearly to `lr_final`) the update is
    theta <- theta + epsilon * mean_i(phi_i - theta), the paper's batched Algorithm 2.
    The query set is used only to log the post-adaptation query loss. The inner Adam state starts fresh for
    every task, so the tasks of a meta-batch are independent and run as one vmap (supervised-reptile carries its
    inner Adam moments from task to task, which serialises the meta-batch).

    References:
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        eval_inner_steps: int = 50,
        inner_optimizer: str = "adam",
        inner_batch_size: int | None = 10,
        lr: float = 1.0,
        lr_final: float | None = 0.0,
        optimizer: str = "sgd",
        **kwargs: Any,
    ) -> None:
        """The paper's Omniglot defaults: 5 Adam(beta1=0) steps at 1e-3 on mini-batches of 10, 50 at evaluation,
        outer SGD whose lr (the meta step size) anneals 1 -> 0. Other arguments: see `MetaLearner`."""
        super().__init__(
            backbone, inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
            inner_optimizer=inner_optimizer, inner_batch_size=inner_batch_size, lr=lr, lr_final=lr_final,
            optimizer=optimizer, **kwargs,
        )  # fmt: skip

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        fast = self.inner_loop(params, episode.support_x, episode.support_y)
        # The query set only feeds the training log: score it as one batch, whatever `transductive` says (the
        # per-query non-transductive path would cost as much as the inner loop itself).
        return subtract(params, fast), self.query_metrics(fast, episode, transductive=True)
