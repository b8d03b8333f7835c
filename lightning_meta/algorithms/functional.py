"""Pure helpers on fast weights (dicts of tensors), so the algorithms read like their papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]


def subtract(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def axpy(alpha: float, x: Params, y: Params) -> Params:
    """y + alpha * x."""
    return {k: y[k] + alpha * x[k] for k in y}


def dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def loss_and_metric(output: Tensor, target: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """(loss, accuracy) for classification, (mse, mse) for regression. Half-precision outputs are scored in
    float32, float64 ones in float64 (a float32 loss would cap float64 gradient checks at ~1e-7 relative)."""
    if output.dtype in (torch.float16, torch.bfloat16):
        output = output.float()
    if task == "classification":
        loss = F.cross_entropy(output, target)
        return loss, (output.argmax(-1) == target).float().mean()
    # Written out rather than F.mse_loss, whose forward-over-reverse derivative (iMAML's Hessian-vector
    # products) raises "ZeroTensors are immutable" in torch <= 2.13 (pytorch/pytorch#123996). Same value.
    loss = ((output - target.to(output.dtype)) ** 2).mean()
    return loss, loss


def detach(params: Params) -> Params:
    """Cut fast weights from any graph that produced them (first-order and implicit meta-gradients)."""
    return {k: v.detach() for k, v in params.items()}


def squared_distance(a: Params, b: Params) -> Tensor:
    """||a - b||^2 summed over every tensor (iMAML's proximal term)."""
    return sum(((a[k] - b[k]) ** 2).sum() for k in a)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (a solved system has zero residual and search direction)."""
    return num / torch.where(den == 0, torch.ones_like(den), den)


def conjugate_gradient(matvec, b: Params, steps: int, damping: float = 0.0, truncate: bool = False) -> Params:
    """Approximately solve (A + damping * I) x = b for symmetric positive definite A, given only v -> A v.

    Runs exactly `steps` iterations from x = 0 (no data-dependent control flow, so it runs inside `vmap`);
    in exact arithmetic n steps solve an n-dimensional system. Tensors of any shape; `b` is a dict of them.

    With `truncate` (A may be indefinite: a Newton step on a non-convex loss) it stops at the first search direction
    p with p^T A p <= 0, written as a mask: the iterate so far is kept and every later step is zero; if that
    happens at the first step the result is b itself (steepest descent). x^T b > 0 always, so -x is a descent
    direction of the quadratic model; for positive definite A the result is the plain iteration's.

    References:
        Hestenes, Stiefel. Methods of Conjugate Gradients for Solving Linear Systems. J. Res. NBS, 1952.
        Nocedal, Wright. Numerical Optimization, 2nd ed., 2006, Algorithm 7.1 (truncated CG).
    """
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r, p = b, b  # residual b - A x and search direction, both b at x = 0
    rr = dot(r, r)
    positive = torch.ones_like(rr, dtype=torch.bool)  # with `truncate`: no negative curvature met yet
    for _ in range(steps):
        ap = axpy(damping, p, matvec(p)) if damping else matvec(p)  # (A + damping I) p
        pap = dot(p, ap)
        alpha, beta = _ratio(rr, pap), None
        if truncate:
            positive = positive & (pap > 0)
            alpha = torch.where(positive, alpha, torch.zeros_like(rr))
        x = axpy(alpha, p, x)
        r = axpy(-alpha, ap, r)
        rr_next = dot(r, r)
        beta = _ratio(rr_next, rr)
        if truncate:
            beta = torch.where(positive, beta, torch.zeros_like(rr))
        p = axpy(beta, p, r)  # r + beta p
        rr = rr_next
    if not truncate:
        return x
    stuck = dot(x, x) == 0  # negative curvature along b itself (or b = 0, where b is the answer too)
    return {k: torch.where(stuck, b[k], x[k]) for k in x}
