"""The vmapped meta-batch equals the per-task loop and the mean of one-task-at-a-time results, with batch norm
in float64, for every algorithm: the outer gradient must be taken inside the vmap (docs/architecture.md, traps)."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.algorithms import FOMAML, IMAML, MAML, MetaSGD, Reptile
from lightning_meta.data.episode import Episode

# name: (class, backbone fixture, settings). Adam's step turns the round-off gradient of a conv bias that
# batch norm cancels into a full-size update: Reptile-with-Adam is checked on the MLP, with SGD on Conv4.
ALGORITHMS = {
    "reptile_sgd": (
        Reptile,
        "conv",
        dict(inner=dict(steps=3, batch_size=4, optimizer="sgd", lr=0.1), inner_state="fresh"),
    ),
    "reptile_adam": (Reptile, "mlp", dict(inner=dict(steps=3, batch_size=4), inner_state="fresh")),
    "fomaml": (FOMAML, "conv", dict(inner=dict(steps=2))),
    "maml": (MAML, "conv", dict(inner=dict(steps=2))),
    "imaml": (IMAML, "conv", dict(inner=dict(steps=4), cg_steps=3)),
    "imaml_hf": (IMAML, "conv", dict(inner=dict(solver="hf", steps=2, hf_cg_steps=3), cg_steps=3)),
    "anil": ("anil", "conv", dict(inner=dict(steps=2))),  # examples/anil.py, through the `anil` fixture
    "metasgd": (MetaSGD, "conv", dict(inner=dict(steps=2))),
}


def per_task(learner, batch: Episode) -> tuple[dict, dict]:
    """meta_gradient called on one task at a time, stacked on a task dimension."""
    outs = [learner.meta_gradient(learner.params(), Episode(*(f[t] for f in batch))) for t in range(len(batch[0]))]
    stack = lambda key: {k: torch.stack([o[key][k] for o in outs]) for k in outs[0][key]}
    return stack(0), stack(1)


@pytest.mark.parametrize("transductive", [True, False])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_vmap_equals_loop_and_per_task_mean(name, transductive, make_episode, request):
    cls, backbone, kwargs = ALGORITHMS[name]
    cls = request.getfixturevalue(cls) if isinstance(cls, str) else cls
    model = request.getfixturevalue(backbone)
    batch = make_episode(5, x_shape=(1, 8, 8) if backbone == "conv" else (4,), tasks=3)
    expected_grads, expected_metrics = per_task(cls(model, transductive=transductive, **kwargs), batch)
    assert max(g.std(0).max() for g in expected_grads.values()) > 1e-4  # the tasks really differ
    for batching, chunk_size in [("vmap", None), ("vmap", 2), ("loop", None)]:
        learner = cls(model, batching=batching, chunk_size=chunk_size, transductive=transductive, **kwargs)
        grads, metrics = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
        for k in expected_grads:
            torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-7, atol=1e-12)
            torch.testing.assert_close(grads[k].mean(0), expected_grads[k].mean(0), rtol=1e-7, atol=1e-12)
        for k in ("query_loss", "query_metric"):
            torch.testing.assert_close(metrics[k], expected_metrics[k], rtol=1e-9, atol=1e-12)
