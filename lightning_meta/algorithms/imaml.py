"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.func import jvp

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params, axpy, conjugate_gradient, detach, squared_distance
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.data.episode import Episode


@dataclass(frozen=True)
class ProximalLoop(InnerLoop):
    """iMAML's inner loop: minimise L_support(phi) + lam/2 ||phi - theta||^2 from phi = theta.

    Args (beyond `InnerLoop`'s):
        lam: proximal strength lambda (paper: 2.0); larger keeps phi nearer theta; 0 at evaluation is plain
            fine-tuning (the authors' test script).
    """

    lam: float = 2.0

    def check(self, where: str) -> ProximalLoop:
        if not self.lam >= 0:
            raise ValueError(f"algorithm.{where}.lam={self.lam}; use 0 or more (the paper uses 2.0)")
        return super().check(where)


# The paper's Omniglot 5-way 1-shot setting: 16 SGD steps at 0.1 with lambda 2, in training and evaluation.
IMAML_INNER = ProximalLoop(steps=16, lr=0.1, lam=2.0)


class IMAML(MetaLearner):
    """iMAML: the inner loop minimises L_support(phi) + lam/2 ||phi - theta||^2 from phi = theta. At the
    minimiser, d phi / d theta = (I + H / lam)^-1 with H the Hessian of L_support at phi, so the meta-gradient
    is the solution v of (I + H / lam) v = grad_phi L_query(phi), found by `cg_steps` conjugate-gradient steps
    on Hessian-vector products (forward-over-reverse, `jvp` of `grad`). Only phi enters: the inner trajectory
    is never kept, so memory does not grow with `inner.steps`. The solve is exact at an exact minimiser; more
    inner steps get closer to one.

    Args (beyond `MetaLearner`'s):
        inner, eval_inner: `ProximalLoop`s (their `lam` is the proximal strength; training needs lam > 0).
        cg_steps: conjugate-gradient steps per task (paper: 5).
        cg_damping: added to the diagonal of I + H / lam; guards against negative curvature (non-convex loss).

    References:
        Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients. NeurIPS 2019.
    """

    mixed_precision = False
    mixed_precision_note = (
        "forward-over-reverse Hessian-vector products fail under autocast with convolutions, and conjugate "
        "gradient amplifies half-precision error in them"
    )

    def __init__(
        self,
        backbone: nn.Module,
        *,
        inner: ProximalLoop = IMAML_INNER,
        eval_inner: ProximalLoop = IMAML_INNER,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, inner=inner, eval_inner=eval_inner, **kwargs)
        if self.inner.lam <= 0:
            raise ValueError(f"algorithm.inner.lam={self.inner.lam}; it must be positive (the paper uses 2.0)")
        if cg_steps < 1 or cg_damping < 0:
            raise ValueError("algorithm.cg_steps must be at least 1 and algorithm.cg_damping 0 or more")
        self.cg_steps, self.cg_damping = cg_steps, cg_damping

    def inner_objective(self, phi: Params, theta: Params, x: Tensor, y: Tensor, loop: ProximalLoop) -> Tensor:
        """The support loss plus the proximal term lam/2 ||phi - theta||^2 that anchors phi to theta (the base
        inner loop minimises it from phi = theta)."""
        return self.loss(phi, x, y)[0] + 0.5 * loop.lam * squared_distance(phi, theta)

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        phi = detach(self.inner_loop(params, episode.support_x, episode.support_y, self.inner))
        query_grad, metrics = self.scaled_grad(self.query_objective, has_aux=True)(phi, episode)
        support_grad = self.scaled_grad(lambda p: self.loss(p, episode.support_x, episode.support_y)[0])
        hvp = lambda v: jvp(support_grad, (phi,), (v,))[1]  # H v at phi, forward-over-reverse
        matvec = lambda v: axpy(1.0 / self.inner.lam, hvp(v), v)  # (I + H / lam) v
        return conjugate_gradient(matvec, query_grad, self.cg_steps, self.cg_damping), metrics
