"""First-order MAML (Finn, Abbeel and Levine, 2017, section 5.2)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params, detach
from lightning_meta.data.episode import Episode


class FOMAML(MetaLearner):
    """First-order MAML: k SGD steps on the support set, no graph kept; the meta-gradient is the query-loss
    gradient at the adapted weights, grad_phi L_query(phi_k), i.e. MAML with d phi_k / d theta taken as I.

    supervised-reptile's `--foml --foml-tail T` (the last inner mini-batch held out and used for the final
    gradient) is this algorithm with `data.train_queries=T`; it counts the held-out batch as an inner
    iteration, so its `--inner-iters k` is `inner_steps=k-1` here.

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017.
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
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
        fast = detach(self.inner_loop(params, episode.support_x, episode.support_y))
        return self.scaled_grad(self.query_objective, has_aux=True)(fast, episode)
