"""The subclass conformance suite: user-style subclasses, each overriding the hooks a researcher overrides, run on
every batching path in float64 (batch norm included) and compared with their own per-task loop; the first-order
ones also with a hand-written `torch.optim` reference of what the subclass means.

The batch has 24 query images per task, so `batching=auto` on CPU takes the "split" path for a learner whose
`task_gradients` implements it for its hooks, and the per-task loop for one that overrides a hook the split path
cannot honour (checked: `expected_auto`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from examples.anil import ANIL
from examples.boil import BOIL
from examples.protomaml import ProtoMAML, prototype_head
from lightning_meta.algorithms import FOMAML, IMAML, MAML, MetaSGD, Reptile
from lightning_meta.algorithms.batching import AUTO_VMAP_MAX_EXAMPLES
from lightning_meta.data.episode import Episode

MU = 0.3  # strength of the proximal term below
LOOP = dict(steps=2, lr=0.3)


class FirstOrderANIL(FOMAML):
    def adapts(self, name):
        return name.startswith("head.")


class FirstOrderBOIL(FOMAML):
    def adapts(self, name):
        return super().adapts(name) and not name.startswith("head.")


class FirstOrderProtoMAML(FOMAML):
    def inner_trajectory(self, params, support_x, support_y, loop, state=None):
        head = prototype_head(self.backbone, params, support_x, support_y)
        return super().inner_trajectory({**params, **head}, support_x, support_y, loop, state)


def _proximal(learner, phi, theta, x, y):
    distance = sum(((phi[k] - theta[k]) ** 2).sum() for k in phi if learner.adapts(k))
    return learner.loss(phi, x, y)[0] + 0.5 * MU * distance


class FirstOrderProximal(FOMAML):
    def inner_objective(self, phi, theta, x, y, loop):
        return _proximal(self, phi, theta, x, y)


class Proximal(MAML):
    def inner_objective(self, phi, theta, x, y, loop):
        return _proximal(self, phi, theta, x, y)


def _per_layer(params, loop):
    return {k: loop.lr * (2.0 if k.startswith("head.") else 0.5) for k in params if not k.startswith("inner_lrs.")}


class FirstOrderPerLayerLr(FOMAML):
    def inner_lr(self, params, loop):
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in _per_layer(params, loop).items()}


class PerLayerLr(MAML):
    def inner_lr(self, params, loop):
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in _per_layer(params, loop).items()}


class WarmAdam(FOMAML):
    """An inner Adam that starts every task from a given state (step 3, second moments 0.01)."""

    def initial_state(self, loop):
        fresh = loop.make_optimizer().init({k: v for k, v in self.params().items() if self.adapts(k)})
        return fresh[0] + 3, {k: torch.full_like(v, 0.01) for k, v in fresh[1].items()}


class WeightDecayedMetaGradient(FOMAML):
    """Its own `meta_gradient`: half FOMAML's, plus weight decay on the meta-parameters."""

    def meta_gradient(self, params, episode):
        grads, metrics = super().meta_gradient(params, episode)
        return {k: 0.5 * g + 0.01 * params[k] for k, g in grads.items()}, metrics


@dataclass(frozen=True)
class Case:
    make: Callable  # backbone -> learner, with any batching
    expected_auto: str  # the path `batching=auto` takes on the large-query batch
    reference: Callable | None = None  # (learner, theta, task episode) -> per-task meta-gradient


def _sgd_reference(head_from_prototypes=False, objective_extra=False, per_layer=False):
    """A hand-written first-order meta-gradient: torch.optim.SGD on a copy of the adapted weights (per-layer step
    sizes as parameter groups), then the query loss's gradient at the adapted weights."""

    def reference(learner, theta, task):
        weights = {k: v.clone() for k, v in theta.items() if k in learner._backbone_names}
        if head_from_prototypes:
            weights.update(prototype_head(learner.backbone, weights, task.support_x, task.support_y))
        adapted = [k for k in weights if learner.adapts(k)]
        leaves = {k: v.clone().requires_grad_(k in adapted) for k, v in weights.items()}
        rates = _per_layer(leaves, learner.inner) if per_layer else dict.fromkeys(adapted, learner.inner.lr)
        opt = torch.optim.SGD([{"params": [leaves[k]], "lr": rates[k]} for k in adapted])
        for _ in range(learner.inner.steps):
            opt.zero_grad()
            loss = F.cross_entropy(functional_call(learner.backbone, leaves, (task.support_x,)), task.support_y)
            if objective_extra:
                loss = loss + 0.5 * MU * sum(((leaves[k] - weights[k]) ** 2).sum() for k in adapted)
            loss.backward()
            opt.step()
        final = {k: v.detach().requires_grad_() for k, v in leaves.items()}
        query = F.cross_entropy(functional_call(learner.backbone, final, (task.query_x,)), task.query_y)
        return dict(zip(final, torch.autograd.grad(query, list(final.values())), strict=True))

    return reference


CASES = {
    "FOMAML": Case(lambda b, **kw: FOMAML(b, inner=LOOP, **kw), "split", _sgd_reference()),
    "MAML": Case(lambda b, **kw: MAML(b, inner=LOOP, **kw), "split"),
    "iMAML": Case(lambda b, **kw: IMAML(b, inner=dict(steps=3, lr=0.1), cg_steps=3, **kw), "split"),
    "Reptile": Case(lambda b, **kw: Reptile(b, inner=dict(LOOP, optimizer="sgd"), inner_state="fresh", **kw), "vmap"),
    "Meta-SGD": Case(lambda b, **kw: MetaSGD(b, inner=LOOP, **kw), "loop"),
    "first-order ANIL (adapts)": Case(lambda b, **kw: FirstOrderANIL(b, inner=LOOP, **kw), "split", _sgd_reference()),
    "second-order ANIL (adapts)": Case(lambda b, **kw: ANIL(b, inner=LOOP, **kw), "loop"),
    "first-order BOIL (adapts)": Case(lambda b, **kw: FirstOrderBOIL(b, inner=LOOP, **kw), "split", _sgd_reference()),
    "BOIL (adapts)": Case(lambda b, **kw: BOIL(b, inner=LOOP, **kw), "loop"),
    "first-order ProtoMAML (inner_trajectory)": Case(
        lambda b, **kw: FirstOrderProtoMAML(b, inner=LOOP, **kw), "split", _sgd_reference(head_from_prototypes=True)
    ),
    "ProtoMAML (inner_trajectory)": Case(lambda b, **kw: ProtoMAML(b, inner=LOOP, **kw), "loop"),
    "first-order proximal term (inner_objective)": Case(
        lambda b, **kw: FirstOrderProximal(b, inner=LOOP, **kw), "split", _sgd_reference(objective_extra=True)
    ),
    "proximal term (inner_objective)": Case(lambda b, **kw: Proximal(b, inner=LOOP, **kw), "loop"),
    "first-order per-layer step sizes (inner_lr)": Case(
        lambda b, **kw: FirstOrderPerLayerLr(b, inner=LOOP, **kw), "split", _sgd_reference(per_layer=True)
    ),
    "per-layer step sizes (inner_lr)": Case(lambda b, **kw: PerLayerLr(b, inner=LOOP, **kw), "loop"),
    "warm inner Adam (initial_state)": Case(
        lambda b, **kw: WarmAdam(b, inner=dict(LOOP, lr=0.01, optimizer="adam"), **kw), "split"
    ),
    "weight-decayed meta-gradient (meta_gradient)": Case(
        lambda b, **kw: WeightDecayedMetaGradient(b, inner=LOOP, **kw), "loop"
    ),
}
PATHS = {"vmap": dict(batching="vmap"), "vmap, chunks of 2": dict(batching="vmap", chunk_size=2),
         "auto": dict(batching="auto")}  # fmt: skip


@pytest.fixture
def large_query_batch(make_episode) -> Episode:
    """3 tasks, 3-way 2-shot, 8 queries per class: 24 query images per task, above `auto`'s vmap limit."""
    batch = make_episode(5, x_shape=(1, 8, 8), queries=8, tasks=3)
    assert batch.query_x.shape[1] > AUTO_VMAP_MAX_EXAMPLES >= batch.support_x.shape[1]
    return batch


def _assert_close(got, expected):
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-7, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(CASES))
def test_every_path_equals_the_per_task_loop(case, path, conv, large_query_batch):
    loop = CASES[case].make(conv, batching="loop")
    other = CASES[case].make(conv, **PATHS[path])
    expected, expected_metrics = loop.task_gradients(loop.params(), large_query_batch)
    if path == "auto":
        assert other.batching_path(large_query_batch) == CASES[case].expected_auto
    got, metrics = other.task_gradients(other.params(), large_query_batch)
    _assert_close(got, expected)
    _assert_close(metrics, expected_metrics)
    assert all(g.abs().max() > 0 for k, g in expected.items() if not k.startswith("head.") or "Proto" not in case)


@pytest.mark.parametrize("case", [name for name, case in CASES.items() if case.reference is not None])
def test_first_order_meta_gradients_equal_a_torch_optim_reference(case, conv, large_query_batch):
    learner = CASES[case].make(conv, batching="loop")
    theta = learner.params()
    grads, _ = learner.task_gradients(theta, large_query_batch)
    for t in range(large_query_batch.support_x.shape[0]):
        task = Episode(*(f[t] for f in large_query_batch))
        _assert_close({k: g[t] for k, g in grads.items()}, CASES[case].reference(learner, theta, task))


SECOND_ORDER = ["MAML", "Meta-SGD", "second-order ANIL (adapts)", "BOIL (adapts)", "ProtoMAML (inner_trajectory)",
                "proximal term (inner_objective)", "per-layer step sizes (inner_lr)"]  # fmt: skip


@pytest.mark.parametrize("case", SECOND_ORDER)
def test_second_order_meta_gradients_equal_finite_differences(case, conv, large_query_batch):
    """The loop path's meta-gradient is the derivative of the adapted query loss: central differences of
    L_query(inner_loop(theta)) in a few coordinates of the first convolution, the head and any step size."""
    learner = CASES[case].make(conv, batching="loop")
    theta = learner.params()
    task = Episode(*(f[0] for f in large_query_batch))
    grads, _ = learner.meta_gradient(theta, task)
    adapted_loss = lambda p: learner.query_objective(learner.inner_loop(p, task.support_x, task.support_y), task)[0]
    names = ["features.0.weight", "head.weight", *[k for k in theta if k.startswith("inner_lrs.")][:1]]
    for name in names:
        for index in range(2):
            step = torch.zeros_like(theta[name]).flatten()
            step[index] = 1e-6
            step = step.view_as(theta[name])
            up, down = dict(theta, **{name: theta[name] + step}), dict(theta, **{name: theta[name] - step})
            numeric = (adapted_loss(up) - adapted_loss(down)) / 2e-6
            torch.testing.assert_close(grads[name].flatten()[index], numeric, rtol=1e-5, atol=1e-8)
