"""FOMAML: the meta-gradient is the query gradient of a model adapted by plain `torch.optim.SGD`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_meta.algorithms import FOMAML


@pytest.mark.parametrize("batch_size", [None, 4])
def test_meta_gradient_equals_query_gradient_of_sgd_adapted_copy(mlp, episode, batch_size):
    learner = FOMAML(mlp, inner=dict(lr=0.3, steps=3, batch_size=batch_size))
    meta_grad, metrics = learner.meta_gradient(learner.params(), episode)

    model = copy.deepcopy(mlp)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    n = len(episode.support_y)
    for step in range(3):
        idx = torch.arange(n) if batch_size is None else torch.arange(step * 4, step * 4 + 4) % n
        opt.zero_grad()
        F.cross_entropy(model(episode.support_x[idx]), episode.support_y[idx]).backward()
        opt.step()
    model.zero_grad()
    query_loss = F.cross_entropy(model(episode.query_x), episode.query_y)
    query_loss.backward()

    for name, p in model.named_parameters():
        torch.testing.assert_close(meta_grad[name], p.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(metrics["query_loss"], query_loss.detach())
    accuracy = (model(episode.query_x).argmax(-1) == episode.query_y).double().mean()
    torch.testing.assert_close(metrics["query_metric"].double(), accuracy)


def test_meta_gradient_ignores_the_path_to_the_adapted_weights(mlp, episode):
    """First order: theta enters only through phi, so a theta that requires grad yields no graph."""
    learner = FOMAML(mlp, inner=dict(lr=0.3, steps=2))
    params = {k: v.clone().requires_grad_() for k, v in learner.params().items()}
    meta_grad, _ = learner.meta_gradient(params, episode)
    assert not any(g.requires_grad for g in meta_grad.values())
