"""EpisodicDataModule: exact resume at any step, DDP sharding, fixed evaluation episodes, and its errors."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.data import Episode
from lightning_meta.errors import DataError


def _batches(loader) -> list[Episode]:
    return list(loader)


def _equal(a: Episode, b: Episode) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_train_stream_is_sized_by_max_steps(make_datamodule, idkit):
    dm = make_datamodule(idkit.trainer(max_steps=5), ways=3, shots=2, queries=3, train_shots=4, train_queries=1)
    batches = _batches(dm.train_dataloader())
    assert len(batches) == 5
    assert batches[0].support_x.shape == (4, 12, 1, 2, 2)  # meta_batch_size 4, 3 ways x 4 train shots
    assert batches[0].query_y.shape == (4, 3)
    assert torch.equal(torch.bincount(batches[0].support_y[2], minlength=3), torch.full((3,), 4))


@pytest.mark.parametrize("start", [1, 3, 6])
def test_resume_at_step_t_continues_the_stream(make_datamodule, idkit, start):
    full = _batches(make_datamodule(idkit.trainer(0, max_steps=7)).train_dataloader())
    resumed = _batches(make_datamodule(idkit.trainer(start, max_steps=7)).train_dataloader())
    assert len(resumed) == 7 - start
    assert all(_equal(a, b) for a, b in zip(resumed, full[start:], strict=True))
    # Consecutive meta-batches are different tasks.
    assert not torch.equal(idkit.decode(full[0].support_x), idkit.decode(full[1].support_x))


def test_resume_at_max_steps_still_yields_a_batch(make_datamodule, idkit):
    """A run resumed from its final checkpoint still gets one batch, never an empty stream."""
    loader = make_datamodule(idkit.trainer(7, max_steps=7)).train_dataloader()
    assert len(_batches(loader)) == 1  # (len(loader) may count the whole run; iteration is what counts)


def test_ddp_ranks_split_each_meta_batch(make_datamodule, idkit):
    one = _batches(make_datamodule(idkit.trainer(0, max_steps=3)).train_dataloader())
    ranks = [_batches(make_datamodule(idkit.trainer(0, 3, r, 2)).train_dataloader()) for r in range(2)]
    for t in range(3):
        r0, r1 = ranks[0][t], ranks[1][t]
        assert r0.support_x.shape[0] == 2 and r1.support_x.shape[0] == 2
        # Rank r takes tasks r, r+2 of the meta-batch: interleaving the two gives the 1-process batch.
        for field, a, b in zip(one[t], r0, r1, strict=True):
            assert torch.equal(field, torch.stack([a[0], b[0], a[1], b[1]]))
        tasks0 = {tuple(ids.tolist()) for ids in idkit.decode(r0.support_x)}
        tasks1 = {tuple(ids.tolist()) for ids in idkit.decode(r1.support_x)}
        assert not tasks0 & tasks1


def test_ddp_ranks_resume_together(make_datamodule, idkit):
    full = _batches(make_datamodule(idkit.trainer(0, 5, 1, 2)).train_dataloader())
    resumed = _batches(make_datamodule(idkit.trainer(2, 5, 1, 2)).train_dataloader())
    assert all(_equal(a, b) for a, b in zip(resumed, full[2:], strict=True)) and len(resumed) == 3


def test_meta_batch_must_split_over_ranks(make_datamodule, idkit):
    dm = make_datamodule(idkit.trainer(0, 3, 0, 3), meta_batch_size=4)
    with pytest.raises(ValueError, match=r"data\.meta_batch_size=4 does not split evenly over 3 processes; "
                       r"use a multiple of 3 \(trainer\.devices x trainer\.num_nodes\)"):  # fmt: skip
        dm.train_dataloader()


def test_max_steps_is_required(make_datamodule, idkit):
    dm = make_datamodule(idkit.trainer(max_steps=-1))
    with pytest.raises(ValueError, match=r"set trainer\.max_steps"):
        dm.train_dataloader()


def test_setup_checks_shots_against_each_split(idkit):
    dm = idkit.DataModule(ways=3, shots=2, queries=3, train_shots=19, train_queries=2)
    with pytest.raises(DataError, match=r"train: shots\+queries=21 but a class of this split has only 20"):
        dm.setup("fit")
    dm = idkit.DataModule(ways=9)
    with pytest.raises(DataError, match=r"data\.ways=9 but the split has only 8 classes"):
        dm.setup("fit")


@pytest.mark.parametrize("name,value", [("ways", 0), ("shots", 0), ("meta_batch_size", 0), ("queries", -1)])
def test_constructor_rejects_bad_sizes(idkit, name, value):
    with pytest.raises(ValueError, match=rf"data\.{name}={value}; it must be"):
        idkit.DataModule(**{name: value})


def test_evaluation_episodes_are_fixed(make_datamodule, idkit):
    dm = make_datamodule(val_episodes=5, test_episodes=7, eval_batch_size=2, shots=1, queries=2)
    for split, loader_fn, episodes in [("val", "val_dataloader", 5), ("test", "test_dataloader", 7)]:
        first = _batches(getattr(dm, loader_fn)())  # one "epoch"
        second = _batches(getattr(dm, loader_fn)())  # the next epoch
        other = _batches(getattr(make_datamodule(val_episodes=5, test_episodes=7, eval_batch_size=2,
                                                 shots=1, queries=2), loader_fn)())  # fmt: skip
        assert [b.support_x.shape[0] for b in first] == [2] * (episodes // 2) + [1]
        assert all(_equal(a, b) and _equal(a, c) for a, b, c in zip(first, second, other, strict=True))
        assert len(first) == len(second) == len(other)
        ids = idkit.decode(torch.cat([b.support_x for b in first]))
        offset = 500 if split == "val" else 1000
        assert bool((ids >= offset).all()) and bool((ids < offset + 160).all())


def test_evaluation_shards_over_ranks(make_datamodule, idkit):
    one = torch.cat([b.query_x for b in make_datamodule(test_episodes=6, eval_batch_size=2).test_dataloader()])
    parts = [
        torch.cat([b.query_x for b in make_datamodule(idkit.trainer(0, 3, r, 2), test_episodes=6,
                                                      eval_batch_size=2).test_dataloader()])
        for r in range(2)
    ]  # fmt: skip
    assert torch.equal(one[0::2], parts[0]) and torch.equal(one[1::2], parts[1])


def test_no_validation_loader_when_disabled(make_datamodule):
    assert make_datamodule(val_episodes=0).val_dataloader() == []
