"""The episode sampler: shapes, labels, disjoint support/query, purity in (seed, split, index), adapters."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.data import ClassificationTasks, Episode, EpisodeBatches, TaskSetTasks, sample_episode
from lightning_meta.errors import DataError


def test_episode_shapes_and_dtypes(idkit):
    ep = sample_episode(idkit.tasks(ways=5), seed=0, split="train", index=3, shots=2, queries=4)
    assert ep.support_x.shape == (10, 1, 2, 2) and ep.query_x.shape == (20, 1, 2, 2)
    assert ep.support_y.shape == (10,) and ep.query_y.shape == (20,)
    assert ep.support_x.dtype == torch.float32 and ep.support_y.dtype == torch.int64
    assert float(ep.support_x.min()) >= 0.0 and float(ep.support_x.max()) <= 1.0


def test_meta_batch_has_a_leading_task_dimension(idkit):
    source = idkit.tasks(ways=5)
    batches = EpisodeBatches(source, 0, "train", (2, 4), range(0, 7), 3)
    assert len(batches) == 3  # 3 + 3 + 1 episodes
    batch = batches[0]
    assert isinstance(batch, Episode)
    assert batch.support_x.shape == (3, 10, 1, 2, 2) and batch.query_y.shape == (3, 20)
    assert batches[2].support_x.shape[0] == 1
    for t, i in enumerate(range(3, 6)):
        one = sample_episode(source, 0, "train", i, 2, 4)
        assert all(torch.equal(a[t], b) for a, b in zip(batches[1], one, strict=True))
    with pytest.raises(IndexError):
        batches[3]


@pytest.mark.parametrize("index", range(20))
def test_labels_classes_and_disjoint_sets(idkit, index):
    source = idkit.tasks(classes=12, ways=4)
    shots, queries = 3, 5
    ep = sample_episode(source, 7, "train", index, shots, queries)
    assert torch.equal(torch.bincount(ep.support_y, minlength=4), torch.full((4,), shots))
    assert torch.equal(torch.bincount(ep.query_y, minlength=4), torch.full((4,), queries))
    support, query = idkit.decode(ep.support_x), idkit.decode(ep.query_x)
    ids = torch.cat([support, query])
    assert len(set(ids.tolist())) == len(ids), "an example is repeated within the episode"
    class_of = idkit.class_of(source)
    label_class = {}
    for example, label in zip(ids.tolist(), torch.cat([ep.support_y, ep.query_y]).tolist(), strict=True):
        assert label_class.setdefault(label, class_of[example]) == class_of[example], "one label, two classes"
    assert len(set(label_class.values())) == 4, "two labels share a class"


def test_label_order_is_random(idkit):
    """The label of a class is a random permutation, not the class order (else a model could learn it)."""
    source = idkit.tasks(classes=12, ways=4)
    monotone = 0
    for index in range(40):
        ep = sample_episode(source, 0, "train", index, 1, 0)
        classes = [idkit.class_of(source)[int(i)] for i in idkit.decode(ep.support_x)]
        by_label = [c for _, c in sorted(zip(ep.support_y.tolist(), classes, strict=True))]
        monotone += by_label == sorted(by_label)
    assert monotone < 10  # 1/24 of 40 tasks expected


def test_support_order_is_shuffled(idkit):
    """Support labels are not grouped by class (Reptile's consecutive mini-batches would see one class)."""
    source = idkit.tasks(classes=12, ways=5)
    grouped = 0
    for index in range(20):
        y = sample_episode(source, 0, "train", index, 4, 0).support_y
        grouped += bool((y.diff() != 0).sum() == 4)
    assert grouped == 0


def test_sampling_is_a_pure_function(idkit):
    source = idkit.tasks()
    first = sample_episode(source, 3, "train", 11, 2, 3)
    again = sample_episode(idkit.tasks(), 3, "train", 11, 2, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    torch.manual_seed(123)  # the global RNG plays no part
    assert all(torch.equal(a, b) for a, b in zip(first, sample_episode(source, 3, "train", 11, 2, 3), strict=True))
    ids = idkit.decode(first.support_x)
    for other in [(4, "train", 11), (3, "val", 11), (3, "train", 12)]:
        changed = sample_episode(source, *other, 2, 3)
        assert not torch.equal(idkit.decode(changed.support_x), ids), other


def test_distinct_tasks_per_index(idkit):
    source = idkit.tasks(classes=12, ways=5)  # C(12, 5) = 792 class sets
    class_sets = set()
    for index in range(200):
        ep = sample_episode(source, 0, "train", index, 1, 0)
        class_sets.add(frozenset(idkit.class_of(source)[int(i)] for i in idkit.decode(ep.support_x)))
    assert len(class_sets) > 150  # ~177 expected for uniform draws


def test_every_class_and_example_gets_drawn(idkit):
    source = idkit.tasks(classes=12, per_class=20, ways=3)
    seen = set()
    for index in range(300):
        ep = sample_episode(source, 0, "train", index, 2, 2)
        seen.update(torch.cat([idkit.decode(ep.support_x), idkit.decode(ep.query_x)]).tolist())
    assert seen == set(range(240))


def test_too_many_ways_or_examples_raise(idkit):
    with pytest.raises(DataError, match=r"data\.ways=13 but the split has only 12 classes"):
        idkit.tasks(classes=12, ways=13)
    table = [torch.arange(0, 20), torch.arange(20, 27)]  # the smallest class has 7 examples
    source = ClassificationTasks(idkit.images(27), table, ways=2)
    source.check_shots(3, 4, "train")
    with pytest.raises(DataError, match=r"train: shots\+queries=8 but a class of this split has only 7"):
        source.check_shots(5, 3, "train")


def test_rotated_classes_turn_their_images():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(6, 4, 4)
    table = [torch.arange(3), torch.arange(3, 6)] * 2
    rotation = torch.tensor([0, 0, 1, 3])
    source = ClassificationTasks(images, table, ways=4, class_rotation=rotation)
    ep = sample_episode(source, 0, "train", 0, 3, 0)
    for c, turns in enumerate(rotation.tolist()):
        expected = torch.rot90(images[table[c]], turns, dims=(-2, -1)).float() / 255
        got = [x[0] for x in ep.support_x if any(torch.equal(x[0], e) for e in expected)]
        assert len(got) == 3, f"class {c}: rotated images not found"


def reference_task(source: ClassificationTasks, generator: torch.Generator, shots: int, queries: int):
    """The sampler written plainly, one class at a time (the draws in the documented order)."""
    classes = torch.randperm(source.num_classes, generator=generator)[: source.ways]
    labels = torch.randperm(source.ways, generator=generator)
    blocks = []
    for c in classes.tolist():
        ids = source.class_examples[c]
        block = source.images[ids[torch.randperm(len(ids), generator=generator)[: shots + queries]]]
        if source.class_rotation is not None:
            block = torch.rot90(block, int(source.class_rotation[c]), dims=(-2, -1))
        blocks.append(block if block.dim() == 4 else block.unsqueeze(1))
    x, y = torch.stack(blocks), labels[:, None].expand(-1, shots + queries)
    sx, qx = x[:, :shots].flatten(0, 1), x[:, shots:].flatten(0, 1)
    sy, qy = y[:, :shots].flatten(), y[:, shots:].flatten()
    ps, pq = torch.randperm(len(sy), generator=generator), torch.randperm(len(qy), generator=generator)
    return source.to_float(sx[ps]), sy[ps], source.to_float(qx[pq]), qy[pq]


@pytest.mark.parametrize("shape", [(5, 5), (3, 5, 5), (4, 6), (3, 4, 6)])
def test_sampler_equals_the_plain_per_class_reference(shape):
    images = torch.randint(0, 256, (40, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    table = [torch.randperm(40, generator=torch.Generator().manual_seed(c))[:9] for c in range(8)]
    square = shape[-1] == shape[-2]
    rotation = torch.tensor([0, 1, 2, 3, 5, 6, 0, 3]) if square else torch.tensor([0, 2] * 4)
    stats = (torch.rand(shape[0]), torch.rand(shape[0]) + 0.5) if len(shape) == 3 else None
    for rot in (None, rotation):
        source = ClassificationTasks(images, table, ways=3, class_rotation=rot, normalization=stats)
        for seed in range(20):
            got = source.sample_task(torch.Generator().manual_seed(seed), 2, 3)
            want = reference_task(source, torch.Generator().manual_seed(seed), 2, 3)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), (rot is None, seed)
        for queries in (3, 0):  # a meta-batch in one go: each task as the reference draws it from its generator
            batch = source.sample_tasks([torch.Generator().manual_seed(seed) for seed in range(5)], 2, queries)
            want = [reference_task(source, torch.Generator().manual_seed(seed), 2, queries) for seed in range(5)]
            for got, expected in zip(batch, zip(*want, strict=True), strict=True):
                assert got.is_contiguous() and torch.equal(got, torch.stack(expected)), (rot is None, queries)


class FakeTaskSet:
    """A learn2learn-style taskset: sample() -> (x, y) with 3 classes of 4 examples, shuffled."""

    def __init__(self, examples: int = 4) -> None:
        self.examples = examples
        self.generator = torch.Generator().manual_seed(0)

    def sample(self):
        y = torch.arange(3).repeat_interleave(self.examples)
        perm = torch.randperm(len(y), generator=self.generator)
        x = torch.arange(len(y), dtype=torch.float32)[:, None] + 100 * y[:, None]
        return x[perm], y[perm]


def test_taskset_adapter_splits_each_class_in_taskset_order():
    taskset = FakeTaskSet()
    reference = FakeTaskSet()
    ep = sample_episode(TaskSetTasks(taskset), 0, "train", 0, 2, 2)
    x, y = reference.sample()
    for label in range(3):
        ordered = x[y == label, 0]  # this class's examples in the order the taskset gave them
        assert torch.equal(ep.support_x[ep.support_y == label, 0].sort().values, ordered[:2].sort().values)
        assert torch.equal(ep.query_x[ep.query_y == label, 0].sort().values, ordered[2:4].sort().values)
    assert ep.support_x.shape == (6, 1) and ep.query_y.shape == (6,)
    assert torch.equal(ep.support_x[:, 0] // 100, ep.support_y.float()), "an example lost its label"


def test_taskset_adapter_shuffles_support_and_query():
    """Support labels are not grouped by class (Reptile's consecutive mini-batches would see one class)."""
    tasks = TaskSetTasks(FakeTaskSet())
    grouped = 0
    for index in range(10):
        y = sample_episode(tasks, 0, "train", index, 2, 2).support_y
        grouped += bool((y.diff() != 0).sum() == 2)
    assert grouped <= 2  # 6 of 90 orders of a 2-2-2 multiset are grouped


def test_taskset_adapter_errors():
    with pytest.raises(DataError, match=r"object has no \.sample\(\) -> \(x, y\)"):
        TaskSetTasks(object())
    with pytest.raises(DataError, match=r"the taskset gave 4 examples for a class; shots\+queries=5"):
        sample_episode(TaskSetTasks(FakeTaskSet()), 0, "train", 0, 2, 3)
