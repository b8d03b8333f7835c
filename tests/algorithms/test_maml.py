"""Second-order MAML: equal to autograd through an explicitly unrolled inner loop and to finite
differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_meta.algorithms import MAML


def unrolled_meta_gradient(model, episode, lr: float, steps: int, transductive: bool):
    """d L_query(phi_k(theta)) / d theta by plain autograd (create_graph=True) through k written-out steps."""
    theta = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    fast = dict(theta)
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, fast, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
    if transductive:
        out = functional_call(model, fast, (episode.query_x,))
    else:  # each query with the support set only
        rows = [functional_call(model, fast, (torch.cat([episode.support_x, q[None]]),))[-1] for q in episode.query_x]
        out = torch.stack(rows)
    loss = F.cross_entropy(out, episode.query_y)
    return dict(zip(theta, torch.autograd.grad(loss, list(theta.values())), strict=True)), loss.detach()


@pytest.mark.parametrize("transductive", [True, False])
@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_meta_gradient_equals_autograd_through_unrolled_inner_loop(backbone, transductive, request, make_episode):
    model = request.getfixturevalue(backbone)
    episode = make_episode(1, x_shape=(4,) if backbone == "mlp" else (1, 8, 8))
    learner = MAML(model, inner=dict(lr=0.4, steps=3), transductive=transductive)
    meta_grad, metrics = learner.meta_gradient(learner.params(), episode)
    expected, query_loss = unrolled_meta_gradient(model, episode, 0.4, 3, transductive)
    for name in expected:
        torch.testing.assert_close(meta_grad[name], expected[name], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(metrics["query_loss"], query_loss)


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_meta_gradient_matches_central_finite_differences(backbone, request, make_episode):
    model = request.getfixturevalue(backbone)
    episode = make_episode(2, x_shape=(4,) if backbone == "mlp" else (1, 8, 8))
    learner = MAML(model, inner=dict(lr=0.3, steps=2))
    theta = learner.params()
    meta_grad, _ = learner.meta_gradient(theta, episode)

    def objective(params):
        fast = learner.inner_loop(params, episode.support_x, episode.support_y)
        return learner.loss(fast, episode.query_x, episode.query_y)[0]

    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):  # three random directions u: (J(theta + eps u) - J(theta - eps u)) / 2 eps = <grad J, u>
        u = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
        shifted = lambda s, u=u: objective({k: theta[k] + s * eps * u[k] for k in theta})
        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
        analytic = sum((meta_grad[k] * u[k]).sum() for k in theta)
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_second_order_terms_matter(mlp, episode):
    """MAML differs from its first-order approximation (else the unrolled check above could pass vacuously)."""
    learner = MAML(mlp, inner=dict(lr=0.4, steps=2))
    meta_grad, _ = learner.meta_gradient(learner.params(), episode)
    fast = {
        k: v.detach() for k, v in learner.inner_loop(learner.params(), episode.support_x, episode.support_y).items()
    }
    first_order = torch.func.grad(lambda p: learner.loss(p, episode.query_x, episode.query_y)[0])(fast)
    gap = max((meta_grad[k] - first_order[k]).abs().max() for k in fast)
    assert gap > 1e-3
