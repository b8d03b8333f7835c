"""GradientCombination against supervised-reptile's own computation, and against Reptile and FOMAML, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_meta.algorithms import FOMAML, GradientCombination, InnerLoop, Reptile
from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import Episode
from lightning_meta.models import Conv4

# The README's ten commands ("Comparing different inner-loop gradient combinations"): preset -> (--foml,
# --inner-iters, --meta-step); shared: --sgd --inner-batch 25 --learning-rate 0.0003, 5 classes, meta-batch 1.
README = {
    "g1": (False, 1, 0.25), "g1_g2": (False, 2, 0.25), "half_g1_g2": (False, 2, 0.125), "g2": (True, 2, 0.25),
    "g1_g2_g3": (False, 3, 0.25), "third_g1_g2_g3": (False, 3, 0.08325), "g3": (True, 3, 0.25),
    "g4": (True, 4, 0.25), "g1_g2_g3_g4": (False, 4, 0.25), "fourth_g1_g2_g3_g4": (False, 4, 0.0625),
}  # fmt: skip
WAYS, BATCH, LEARNING_RATE = 5, 25, 0.0003


def authors_train_step(model: nn.Module, inputs, labels, foml: bool, inner_iters: int, meta_step: float):
    """supervised-reptile's `Reptile.train_step` / `FOML.train_step` (no tail) for one task, meta-batch 1, written
    out by hand: `inner_iters` steps of tf.train.GradientDescentOptimizer on the *summed* cross-entropy of
    consecutive mini-batches of the (already shuffled) mini-dataset, then old + meta_step * (new - old) (Reptile)
    or old + meta_step * (last step) (FOML). Returns the new weights."""
    old = {k: v.detach().clone() for k, v in model.named_parameters()}
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    for i in range(inner_iters):
        last_backup = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt.zero_grad()
        F.cross_entropy(model(inputs[i * BATCH : (i + 1) * BATCH]), labels[i * BATCH : (i + 1) * BATCH],
                        reduction="sum").backward()  # fmt: skip
        opt.step()
    new = {k: v.detach() for k, v in model.named_parameters()}
    if foml:
        return {k: old[k] + meta_step * (new[k] - last_backup[k]) for k in old}
    return {k: old[k] + meta_step * (new[k] - old[k]) for k in old}


def tiny_conv() -> nn.Module:
    torch.manual_seed(0)
    return Conv4(out_features=WAYS, hidden=4, image_size=8).double()


def mini_dataset(shots: int, seed: int = 0):
    """A shuffled 5-way task of random 8x8 images: (N*shots, 1, 8, 8), (N*shots,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS).repeat_interleave(shots)[torch.randperm(WAYS * shots, generator=g)]
    return torch.rand(WAYS * shots, 1, 8, 8, generator=g, dtype=torch.float64), labels


def preset_learner(name: str) -> GradientCombination:
    cfg = load_config([f"experiment=gradcomb_{name}"])
    return instantiate(cfg.algorithm, backbone=tiny_conv(), task="classification")


@pytest.mark.parametrize("name", README)
def test_preset_update_is_the_authors_update(name):
    foml, inner_iters, meta_step = README[name]
    learner = preset_learner(name)
    assert learner.inner.steps == inner_iters and learner.inner.batch_size == BATCH
    assert learner.inner.lr == pytest.approx(LEARNING_RATE * BATCH)  # their summed loss, our mean
    x, y = mini_dataset(shots=inner_iters * BATCH // WAYS)  # --train-shots 5 x inner_iters
    # The four-step presets pool 19 shots and 1 query per class: the query set is the last 5 examples.
    episode = Episode(x[:-WAYS], y[:-WAYS], x[-WAYS:], y[-WAYS:]) if learner.pool_queries else Episode(x, y, x, y)
    theta = learner.params()
    grads, _ = learner.meta_gradient(theta, episode)
    ours = {k: theta[k] - learner.outer.lr * grads[k] for k in theta}  # the first outer SGD step (lr not yet annealed)
    theirs = authors_train_step(learner.backbone, x, y, foml, inner_iters, meta_step)
    moved = max(float((theirs[k] - theta[k]).abs().max()) for k in theta)
    assert moved > 1e-6  # the step is not vacuous
    for k in theta:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-12 * (1 + moved))


def task_batch(tasks: int, n: int) -> Episode:
    g = torch.Generator().manual_seed(1)
    y = torch.stack([torch.randperm(n, generator=g) % 3 for _ in range(tasks)])
    x = torch.rand(tasks, n, 1, 8, 8, generator=g, dtype=torch.float64)
    return Episode(x, y, x[:, :3], y[:, :3])


def conv3() -> nn.Module:
    torch.manual_seed(0)
    return Conv4(out_features=3, hidden=4, image_size=8).double()


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_every_step_summed_is_reptile(steps):
    inner = InnerLoop(steps=steps, lr=0.1, batch_size=4)
    learner = GradientCombination(conv3(), inner=inner)
    reptile = Reptile(conv3(), inner=inner, inner_state="fresh")
    batch = task_batch(3, 4 * steps)
    ours, _ = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    theirs, _ = reptile.map_tasks(reptile.meta_gradient, reptile.params(), batch)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-14)


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_last_step_alone_is_inner_lr_times_fomaml(steps):
    """--foml: the k-th step is alpha times FOMAML's gradient with k-1 inner steps and the k-th mini-batch as its
    query set (scored as one batch, as the authors' minimize_op sees it)."""
    inner = InnerLoop(steps=steps, lr=0.1, batch_size=4)
    learner = GradientCombination(conv3(), inner=inner, combination=[steps])
    fomaml = FOMAML(conv3(), inner=inner.replace(steps=steps - 1), transductive=True)
    batch = task_batch(3, 4 * steps)
    split = Episode(batch.support_x[:, :-4], batch.support_y[:, :-4], batch.support_x[:, -4:], batch.support_y[:, -4:])
    ours, _ = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    theirs, _ = fomaml.map_tasks(fomaml.meta_gradient, fomaml.params(), split)
    assert max(float(g.abs().max()) for g in ours.values()) > 1e-4
    for k in ours:
        torch.testing.assert_close(ours[k], inner.lr * theirs[k], rtol=0, atol=1e-14)


@pytest.mark.parametrize("combination, scale", [([1, 3], "sum"), ([2, 3, 4], "mean"), ([4, 1], "mean")])
def test_any_combination_is_its_weighted_steps(combination, scale):
    """phi_{i-1} - phi_i from Reptile's theta - phi_i at i and i-1 steps; the weights 1 or 1/|combination|."""
    inner = InnerLoop(steps=4, lr=0.1, batch_size=4)
    episode = Episode(*(field[0] for field in task_batch(1, 16)))
    learner = GradientCombination(conv3(), inner=inner, combination=combination, scale=scale)
    theta = learner.params()
    reptile = [Reptile(conv3(), inner=inner.replace(steps=i), inner_state="fresh").meta_gradient(theta, episode)[0]
               for i in range(5)]  # fmt: skip
    weight = 1 / len(combination) if scale == "mean" else 1.0
    expected = {k: sum(weight * (reptile[i][k] - reptile[i - 1][k]) for i in combination) for k in theta}
    ours, _ = learner.meta_gradient(theta, episode)
    for k in theta:
        torch.testing.assert_close(ours[k], expected[k], rtol=0, atol=1e-14)


def test_vmap_and_loop_agree_and_pooled_queries_are_the_last_batch():
    inner = InnerLoop(steps=3, lr=0.1, batch_size=4)
    batch = task_batch(3, 12)
    grads = {}
    for batching in ("vmap", "loop"):
        learner = GradientCombination(conv3(), inner=inner, combination=[1, 3], batching=batching)
        grads[batching], _ = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    pooled = GradientCombination(conv3(), inner=inner, combination=[1, 3], pool_queries=True)
    split = Episode(batch.support_x[:, :9], batch.support_y[:, :9], batch.support_x[:, 9:], batch.support_y[:, 9:])
    grads["pooled"], _ = pooled.map_tasks(pooled.meta_gradient, pooled.params(), split)
    for k in grads["vmap"]:
        torch.testing.assert_close(grads["loop"][k], grads["vmap"][k], rtol=0, atol=1e-14)
        torch.testing.assert_close(grads["pooled"][k], grads["vmap"][k], rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, key",
    [(dict(combination=[0]), "combination"), (dict(combination=[3]), "combination"),
     (dict(combination=[1, 1]), "combination"), (dict(combination=[]), "combination"), (dict(scale="avg"), "scale")],
)  # fmt: skip
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=f"algorithm.{key}="):
        GradientCombination(conv3(), inner=InnerLoop(steps=2), **kwargs)
