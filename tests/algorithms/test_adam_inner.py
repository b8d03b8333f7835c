"""Second-order meta-gradients through an inner Adam: finite, and equal to autograd through hand-written Adam steps
whose square root has derivative 0 at 0 (`inner._root`); the plain (non-differentiated) path is torch.optim.Adam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from examples.anil import ANIL
from lightning_meta.algorithms import MAML, MetaSGD

LOOP = dict(steps=2, lr=1e-3, optimizer="adam")


def _root(v):
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def _reference(learner, theta, episode, beta2=0.999, eps=1e-8):
    """Autograd through two written-out Adam(beta1=0) steps on the adapted weights, then the query loss."""
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    fast = dict(leaves)
    adapted = [k for k in fast if learner.adapts(k)]
    v = {k: torch.zeros_like(fast[k]) for k in adapted}
    for t in range(1, 3):
        loss = F.cross_entropy(functional_call(learner.backbone, fast, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(loss, [fast[k] for k in adapted], create_graph=True)
        correction = (1 - beta2**t) ** 0.5
        for k, g in zip(adapted, grads, strict=True):
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            fast[k] = fast[k] - 1e-3 * g / (_root(v[k]) / correction + eps)
    query = F.cross_entropy(functional_call(learner.backbone, fast, (episode.query_x,)), episode.query_y)
    return dict(zip(leaves, torch.autograd.grad(query, list(leaves.values())), strict=True))


@pytest.mark.parametrize("cls", [MAML, ANIL])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_maml_through_adam_is_finite_and_equals_autograd(cls, batching, conv, make_episode):
    batch = make_episode(3, x_shape=(1, 8, 8), tasks=2)
    learner = cls(conv, inner=LOOP, batching=batching)
    theta = learner.params()
    grads, _ = learner.task_gradients(theta, batch)
    assert all(torch.isfinite(g).all() for g in grads.values())
    for t in range(2):
        expected = _reference(learner, theta, type(batch)(*(f[t] for f in batch)))
        for k in expected:
            torch.testing.assert_close(grads[k][t], expected[k], rtol=1e-6, atol=1e-9)


def test_a_zero_gradient_entry_no_longer_makes_the_meta_gradient_nan(conv, make_episode):
    """A convolution's bias before batch norm has g = 0 at step 1 (the normalisation cancels it): sqrt's derivative
    there is infinite, and without the subgradient the meta-gradient is NaN."""
    learner = MAML(conv, inner=LOOP)
    theta = learner.params()
    episode = make_episode(4, x_shape=(1, 8, 8))
    grads, _ = learner.meta_gradient(theta, episode)
    assert all(torch.isfinite(g).all() for g in grads.values())
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    loss = F.cross_entropy(functional_call(conv, leaves, (episode.support_x,)), episode.support_y)
    g = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    assert any((gi == 0).any() for gi in g)  # the case that made plain sqrt NaN


def test_meta_sgd_refuses_an_adam_inner_loop(conv):
    with pytest.raises(ValueError, match=r"Meta-SGD learns SGD step sizes; use algorithm\.inner\.optimizer=sgd"):
        MetaSGD(conv, inner=LOOP)
