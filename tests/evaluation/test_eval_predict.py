"""Transductive vs non-transductive prediction with a batch-norm network (Conv4 uses batch statistics)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_meta.algorithms import Reptile
from lightning_meta.data.episode import Episode
from lightning_meta.models import Conv4


def learner(transductive: bool) -> Reptile:
    torch.manual_seed(0)
    backbone = Conv4(out_features=3, hidden=8, image_size=8)
    return Reptile(backbone, eval_inner=dict(optimizer="sgd", lr=0.1, steps=2), transductive=transductive)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def other_queries_changed(query_x: torch.Tensor) -> torch.Tensor:
    """Query 0 kept; the others reversed in order and half of them replaced by new images."""
    others = torch.cat([query_x[1:][::2], images(len(query_x[1:][1::2]), seed=9)]).flip(0)
    return torch.cat([query_x[:1], others])


def test_non_transductive_prediction_of_a_query_ignores_the_other_queries():
    meta = learner(transductive=False)
    support_x, query_x = images(6, seed=1), images(9, seed=2)
    fast = meta.inner_loop(meta.params(), support_x, torch.tensor([0, 1, 2] * 2), meta.eval_inner)
    out = meta.predict(fast, support_x, query_x)
    changed = meta.predict(fast, support_x, other_queries_changed(query_x))
    torch.testing.assert_close(changed[0], out[0], rtol=1e-5, atol=1e-6)
    alone = meta.predict(fast, support_x, query_x[:1])
    torch.testing.assert_close(alone[0], out[0], rtol=1e-5, atol=1e-6)
    other_support = meta.predict(fast, images(6, seed=7), query_x)
    assert (other_support[0] - out[0]).abs().max() > 1e-3  # not a constant: the support set does matter
    # and it is exactly "the query appended to the support set", as in Reptile's evaluation
    for i in (0, 4):
        reference = meta(torch.cat([support_x, query_x[i : i + 1]]), fast)[-1]
        torch.testing.assert_close(out[i], reference, rtol=1e-5, atol=1e-6)


def test_transductive_prediction_depends_on_the_other_queries_through_batch_norm():
    meta = learner(transductive=True)
    support_x, query_x = images(6, seed=1), images(9, seed=2)
    fast = meta.inner_loop(meta.params(), support_x, torch.tensor([0, 1, 2] * 2), meta.eval_inner)
    out = meta.predict(fast, support_x, query_x)
    changed = meta.predict(fast, support_x, other_queries_changed(query_x))
    assert (changed[0] - out[0]).abs().max() > 1e-3
    torch.testing.assert_close(out, meta(query_x, fast))  # one batch of all queries


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_non_transductive_evaluation_scores_each_query_with_the_support_set_only(batching):
    meta = learner(transductive=False)
    meta.batching = batching
    g = torch.Generator().manual_seed(3)
    batch = Episode(
        images(12, 4).view(2, 6, 1, 8, 8),
        torch.tensor([[0, 1, 2] * 2] * 2),
        images(10, 5).view(2, 5, 1, 8, 8),
        torch.randint(0, 3, (2, 5), generator=g),
    )
    out = meta.map_tasks(meta.evaluate_task, meta.params(), batch)
    for t in range(2):
        fast = meta.inner_loop(meta.params(), batch.support_x[t], batch.support_y[t], meta.eval_inner)
        logits = torch.stack([meta(torch.cat([batch.support_x[t], q[None]]), fast)[-1] for q in batch.query_x[t]])
        loss = F.cross_entropy(logits, batch.query_y[t])
        accuracy = (logits.argmax(-1) == batch.query_y[t]).float().mean()
        torch.testing.assert_close(out["query_loss"][t], loss, rtol=1e-5, atol=1e-6)
        assert out["query_metric"][t] == accuracy
