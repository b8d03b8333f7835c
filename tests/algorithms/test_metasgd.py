"""Meta-SGD: the meta-gradient of the initialisation and of the learned step sizes equals autograd through the
inner loop written out by hand; the step sizes are meta-parameters that training moves and checkpoints keep."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_meta.algorithms import MetaSGD


def test_meta_gradient_of_init_and_step_sizes_equals_unrolled_autograd(conv, make_episode):
    episode = make_episode(1, x_shape=(1, 8, 8))
    learner = MetaSGD(conv, inner=dict(lr=0.1, steps=2))
    with torch.no_grad():  # distinct step sizes per element, so a mix-up of names or elements shows
        for p in learner.inner_lrs.values():
            p.uniform_(0.05, 0.2)
    meta_grad, _ = learner.meta_gradient(learner.params(), episode)

    theta = {k: v.clone().requires_grad_() for k, v in conv.named_parameters()}
    alpha = {k: learner.inner_lrs[k.replace(".", ":")].detach().clone().requires_grad_() for k in theta}
    fast = dict(theta)
    for _ in range(2):  # phi <- phi - alpha * grad L_support(phi), element-wise, graph kept
        loss = F.cross_entropy(functional_call(conv, fast, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {k: fast[k] - alpha[k] * g for k, g in zip(fast, grads, strict=True)}
    query = F.cross_entropy(functional_call(conv, fast, (episode.query_x,)), episode.query_y)
    expected = torch.autograd.grad(query, [*theta.values(), *alpha.values()])
    names = [*theta, *(f"inner_lrs.{k.replace('.', ':')}" for k in alpha)]
    assert set(meta_grad) == set(names)
    for name, value in zip(names, expected, strict=True):
        torch.testing.assert_close(meta_grad[name], value, rtol=1e-8, atol=1e-12, msg=name)
    assert all(meta_grad[n].abs().max() > 1e-6 for n in names if n.startswith("inner_lrs.") and "bias" not in n)


def test_step_sizes_are_trained_and_saved_like_the_backbone(mlp, make_episode):
    learner = MetaSGD(mlp, inner=dict(lr=0.1), outer=dict(lr=0.01))
    assert {n for n in learner.state_dict() if n.startswith("inner_lrs.")} == {
        f"inner_lrs.{n.replace('.', ':')}" for n, _ in mlp.named_parameters()
    }
    opt = learner.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 2 * sum(p.numel() for p in mlp.parameters())
    grads, _ = learner.map_tasks(learner.meta_gradient, learner.params(), make_episode(2, tasks=2))
    before = {k: v.clone() for k, v in learner.inner_lrs.items()}
    for n, p in learner.meta_parameters().items():
        p.grad = grads[n].mean(0)
    opt.step()
    assert all((learner.inner_lrs[k] - before[k]).abs().max() > 1e-4 for k in before)


def test_only_sgd_step_sizes_are_learned(mlp):
    with pytest.raises(ValueError, match="algorithm.inner.optimizer='adam': Meta-SGD learns SGD step sizes"):
        MetaSGD(mlp, inner=dict(optimizer="adam"))
