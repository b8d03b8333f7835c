"""Hessian-free (Newton-CG) minimisation with no data-dependent control flow, so that it runs inside `vmap`.

One step: a search direction from a fixed number of conjugate-gradient steps on Hessian-vector products
(forward-over-reverse, `jvp` of `grad`), then a line search that scores a fixed set of step sizes and keeps the
best with tensor ops. Step size 0 is always a candidate, so a step never raises the objective (a poor direction,
or a NaN, leaves the point where it was).

A network's loss is not convex: CG must stop where it meets negative curvature (the line search Newton-CG of
Nocedal and Wright), or its iterates turn uphill. The Hessian of iMAML's inner objective at initialisation has
eigenvalues from -24 to 139 on the tests' Conv4 (batch norm, float64) even with lam = 2 added; on Omniglot 5-way
1-shot with Conv4-64 (8 tasks, step sizes 1, 1/2, 1/4, 1/8), 3 Newton steps of 5 plain CG steps took the objective
from 1.65 to 0.93, of the truncated CG below to 0.26. So the CG here is `functional.conjugate_gradient` with that
stop (`truncate=True`), written as a mask.

References:
    Martens. Deep learning via Hessian-free optimization. ICML 2010.
    Nocedal, Wright. Numerical Optimization, 2nd ed., 2006, Section 7.1 (line search Newton-CG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jvp

from lightning_meta.algorithms.functional import Params, axpy, conjugate_gradient


def newton_direction(objective: Callable[[Params], Tensor], point: Params, cg_steps: int) -> tuple[Params, Tensor]:
    """(d, f(point)) with d ~ H^-1 grad f(point) from `cg_steps` truncated CG steps; -d is a descent direction.
    Costs one gradient and `cg_steps` Hessian-vector products."""
    gradient, value = grad_and_value(objective)(point)
    hvp = lambda v: jvp(grad(objective), (point,), (v,))[1]  # H v at `point`, forward-over-reverse
    return conjugate_gradient(hvp, gradient, cg_steps, truncate=True), value.detach()


def line_search(objective: Callable[[Params], Tensor], point: Params, direction: Params, value: Tensor,
                step_sizes: Sequence[float]) -> Params:  # fmt: skip
    """point - t d for the t in {0, *step_sizes} with the lowest objective (`value` is f(point), the t = 0 score).
    Every candidate is evaluated (one forward pass each); argmin and a gather pick one, per task under vmap."""
    with torch.no_grad():
        scores = torch.stack([value, *(objective(axpy(-t, direction, point)) for t in step_sizes)])
    sizes = torch.tensor([0.0, *step_sizes], dtype=value.dtype, device=value.device)
    best = sizes[torch.nan_to_num(scores, nan=torch.inf).argmin()]  # NaN (diverged) never wins
    return axpy(-best, direction, point)


def newton_cg_step(objective: Callable[[Params], Tensor], point: Params, cg_steps: int,
                   step_sizes: Sequence[float]) -> Params:  # fmt: skip
    """One Hessian-free step on `objective`: the Newton-CG direction, then the fixed-grid line search.

    Cost: one gradient, `cg_steps` Hessian-vector products and `len(step_sizes)` forward passes.
    """
    direction, value = newton_direction(objective, point, cg_steps)
    return line_search(objective, point, direction, value, step_sizes)
