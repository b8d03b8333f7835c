"""The adaptation curve: the query metric after K inner steps equals evaluating with eval_inner.steps=K,
for the base inner loop (SGD, Adam with mini-batches), an overridden inner loop, under vmap and the loop."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from lightning_meta.algorithms import Reptile
from lightning_meta.algorithms.inner import SGD
from lightning_meta.data.episode import Episode, sample_episode, stack_episodes
from lightning_meta.data.sinusoid import SinusoidTasks
from lightning_meta.models import MLP, Conv4


class Proximal(Reptile):
    """An iMAML-like override with the base signature: SGD on the support loss + 1/2 |phi - theta|^2."""

    def inner_loop(self, params, support_x, support_y, loop=None):
        steps = (self.inner if loop is None else loop).steps
        theta = params
        objective = lambda p: (
            self.loss(p, support_x, support_y)[0] + 0.5 * sum(((p[k] - theta[k]) ** 2).sum() for k in p)
        )
        for _ in range(steps):
            params, _ = SGD().step(params, grad(objective)(params), (), 0.05)
        return params


def sine_batch(tasks: int = 3):
    return stack_episodes([sample_episode(SinusoidTasks(), 0, "test", i, 5, 10) for i in range(tasks)])


def image_batch(tasks: int = 3):
    g = torch.Generator().manual_seed(0)
    return Episode(
        torch.rand(tasks, 6, 1, 8, 8, generator=g),
        torch.randint(0, 3, (tasks, 6), generator=g),
        torch.rand(tasks, 9, 1, 8, 8, generator=g),
        torch.randint(0, 3, (tasks, 9), generator=g),
    )


SETTINGS = {
    "sine-sgd": (
        Reptile,
        lambda: MLP(1, (8, 8), 1),
        "regression",
        dict(optimizer="sgd", lr=0.02),
    ),
    "conv-adam-minibatch": (
        Reptile,
        lambda: Conv4(out_features=3, hidden=4, image_size=8),
        "classification",
        dict(optimizer="adam", lr=0.01, batch_size=4),
    ),
    "proximal-override": (Proximal, lambda: MLP(1, (8, 8), 1), "regression", {}),
}


def make(setting: str, backbone, steps: int, **kwargs):
    """A learner of `setting` whose evaluation inner loop takes `steps` steps."""
    cls, _, task, eval_inner = SETTINGS[setting]
    return cls(backbone, task=task, inner=dict(batch_size=None), eval_inner={**eval_inner, "steps": steps}, **kwargs)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_curve_point_equals_evaluation_with_that_many_steps(setting, batching):
    torch.manual_seed(0)
    backbone = SETTINGS[setting][1]()
    batch = sine_batch() if SETTINGS[setting][2] == "regression" else image_batch()
    steps = [0, 1, 3, 6]
    learner = make(setting, backbone, 6, eval_curve_steps=steps, batching=batching)
    out = learner.map_tasks(learner.evaluate_task, learner.params(), batch)
    assert out["curve"].shape == (3, len(steps))
    for i, k in enumerate(steps):
        plain = make(setting, backbone, k, batching=batching)
        expected = plain.map_tasks(plain.evaluate_task, plain.params(), batch)
        assert "curve" not in expected
        torch.testing.assert_close(out["curve"][:, i], expected["query_metric"], rtol=1e-6, atol=0)
    assert learner.eval_inner.steps == 6  # a value: the curve never changes it
    assert not torch.equal(out["curve"][:, 0], out["curve"][:, -1])  # adaptation changed the metric


def test_curve_costs_nothing_when_off_and_one_inner_loop_per_extra_point():
    learner = make("sine-sgd", MLP(1, (8, 8), 1), 10, batching="loop")
    calls = []
    inner_loop = learner.inner_loop
    learner.inner_loop = lambda p, x, y, loop=None: calls.append(loop.steps) or inner_loop(p, x, y, loop)
    learner.map_tasks(learner.evaluate_task, learner.params(), sine_batch(2))
    assert calls == [10, 10]  # off: one inner loop per task, nothing else
    calls.clear()
    learner.eval_curve_steps = (1, 5, 10)
    learner.map_tasks(learner.evaluate_task, learner.params(), sine_batch(2))
    assert calls == [10, 1, 5] * 2  # the final point (10 = eval_inner.steps) is reused, not recomputed


def test_negative_curve_steps_are_rejected():
    with pytest.raises(ValueError, match=r"algorithm.eval_curve_steps=\[1, -1\]; give inner-step counts >= 0"):
        Reptile(MLP(1, (8,), 1), task="regression", eval_curve_steps=[1, -1])
