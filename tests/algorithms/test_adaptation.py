"""Adaptation lowers the support loss on a convex task, and meta-training lowers the post-adaptation query
loss on sine-wave regression, for every algorithm."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.algorithms import FOMAML, IMAML, MAML, MetaSGD, Reptile
from lightning_meta.data.episode import sample_episode, stack_episodes
from lightning_meta.data.sinusoid import SinusoidTasks
from lightning_meta.models import MLP

CONVEX = {
    "reptile_adam": (Reptile, dict(lr=0.05, batch_size=None, optimizer="adam")),
    "reptile_sgd": (Reptile, dict(lr=0.05, optimizer="sgd", batch_size=None)),
    "fomaml": (FOMAML, dict(lr=0.05)),
    "maml": (MAML, dict(lr=0.05)),
    "imaml": (IMAML, dict(lr=0.05, lam=2.0)),
}


@pytest.mark.parametrize("name", list(CONVEX))
def test_adaptation_never_raises_the_support_loss_on_a_convex_task(name, linear_task):
    cls, loop = CONVEX[name]
    model, episode = linear_task
    learner = (
        cls(model, task="regression", inner=loop, inner_state="fresh")
        if cls is Reptile
        else cls(model, task="regression", inner=loop)
    )
    theta = learner.params()
    losses, objectives = [], []
    for steps in range(9):  # the support loss after 0, 1, ..., 8 inner steps
        phi = learner.inner_loop(theta, episode.support_x, episode.support_y, learner.inner.replace(steps=steps))
        losses.append(float(learner.loss(phi, episode.support_x, episode.support_y)[0]))
        proximal = sum(((phi[k] - theta[k]) ** 2).sum() for k in phi) * getattr(learner.inner, "lam", 0.0) / 2
        objectives.append(losses[-1] + float(proximal))
    assert losses[-1] < 0.9 * losses[0]
    if cls is IMAML:  # gradient descent lowers its own objective, and the support loss stays below the start
        assert all(b <= a + 1e-12 for a, b in zip(objectives, objectives[1:], strict=False)), objectives
        assert max(losses[1:]) <= losses[0]
    else:
        assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False)), losses


SINE = {  # small settings that learn within 100 meta-iterations of 5 tasks
    "reptile": (
        Reptile,
        dict(inner=dict(lr=0.02, steps=5, optimizer="sgd", batch_size=None), outer=dict(lr=1.0, lr_final=None)),
    ),
    "fomaml": (FOMAML, dict(inner=dict(lr=0.02), outer=dict(lr=3e-3))),
    "maml": (MAML, dict(inner=dict(lr=0.02), outer=dict(lr=3e-3))),
    "imaml": (IMAML, dict(inner=dict(lr=0.02, steps=3, lam=10.0), cg_steps=2, outer=dict(lr=3e-3))),
    "metasgd": (MetaSGD, dict(inner=dict(lr=0.02), outer=dict(lr=1e-3))),
}


def sine_batch(split: str, start: int, tasks: int):
    return stack_episodes([sample_episode(SinusoidTasks(), 0, split, i, 10, 10) for i in range(start, start + tasks)])


@pytest.mark.parametrize("name", list(SINE))
def test_meta_training_lowers_the_post_adaptation_query_loss_on_sine_tasks(name):
    cls, kwargs = SINE[name]
    torch.manual_seed(0)
    eval_inner = {**kwargs["inner"], "steps": 5}
    learner = cls(MLP(1, (40, 40), 1), task="regression", eval_inner=eval_inner, **kwargs)
    val = sine_batch("val", 0, 50)
    evaluate = lambda: float(learner.map_tasks(learner.evaluate_task, learner.params(), val)["query_loss"].mean())
    before = evaluate()
    opt = learner.configure_optimizers()
    for step in range(100):  # the training step without a Trainer: mean meta-gradient, one optimizer step
        grads, _ = learner.map_tasks(learner.meta_gradient, learner.params(), sine_batch("train", 5 * step, 5))
        for n, p in learner.meta_parameters().items():
            p.grad = grads[n].mean(0)
        opt.step()
    assert evaluate() < 0.85 * before  # measured: 0.52 (Reptile) to 0.75 (FOMAML) of the start
