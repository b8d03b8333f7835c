"""Pure helpers on fast weights (dicts of tensors), so the algorithms read like their papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]


def tree_map(fn, *trees: Params) -> Params:
    return {k: fn(*(t[k] for t in trees)) for k in trees[0]}


def subtract(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def axpy(alpha: float, x: Params, y: Params) -> Params:
    """y + alpha * x."""
    return {k: y[k] + alpha * x[k] for k in y}


def dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    return {k: params[k] - lr * grads[k] for k in params}


def adam_step(
    params: Params, grads: Params, state: tuple[int, Params], lr: float, beta2: float = 0.999, eps: float = 1e-8
) -> tuple[Params, tuple[int, Params]]:
    """Adam with beta1 = 0 (the Reptile paper's inner optimizer): one step with bias-corrected second moments."""
    t, v = state
    t += 1
    v = {k: beta2 * v[k] + (1 - beta2) * grads[k] ** 2 for k in v}
    correction = 1 - beta2**t
    new = {k: params[k] - lr * grads[k] / ((v[k] / correction).sqrt() + eps) for k in params}
    return new, (t, v)


def loss_and_metric(output: Tensor, target: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """(loss, accuracy) for classification, (mse, mse) for regression."""
    if task == "classification":
        output = output.float()
        loss = F.cross_entropy(output, target)
        return loss, (output.argmax(-1) == target).float().mean()
    loss = F.mse_loss(output.float(), target.float())
    return loss, loss


def batch_indices(step: int, batch_size: int | None, n: int) -> Tensor | None:
    """Example ids of inner mini-batch `step`: consecutive, wrapping around the (pre-shuffled) support set."""
    if batch_size is None or batch_size >= n:
        return None
    start = step * batch_size
    return torch.arange(start, start + batch_size) % n
