"""Episodes as pure functions of (seed, split, index), and the task sources they are drawn from."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta.errors import DataError, UserError


class Episode(NamedTuple):
    """One task, or a meta-batch of tasks when every field has a leading task dimension T.

    Shapes:
        support_x (T, N*K, *x), support_y (T, N*K) or (T, N*K, *y),
        query_x (T, N*Q, *x), query_y (T, N*Q) or (T, N*Q, *y).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


class TaskSource(Protocol):
    """Draws one task from a generator; the same generator state must give the same task."""

    def sample_task(self, generator: torch.Generator, shots: int, queries: int) -> Episode: ...


def episode_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed that mixes the run seed, the split name and the episode index (no collisions in practice)."""
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def episode_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The generator episode `index` of `split` is drawn from."""
    return torch.Generator().manual_seed(episode_seed(seed, split, index))


def sample_episode(source: TaskSource, seed: int, split: str, index: int, shots: int, queries: int) -> Episode:
    """Episode `index` of `split`: a pure function of its arguments."""
    return source.sample_task(episode_generator(seed, split, index), shots, queries)


def stack_episodes(episodes: Sequence[Episode]) -> Episode:
    return Episode(*(torch.stack(field) for field in zip(*episodes, strict=True)))


class ClassificationTasks:
    """N-way tasks over a class -> example-ids table; images stay one uint8 tensor, indexed per task.

    Args:
        images: all examples of the split's source, uint8 (M, C, H, W) or (M, H, W).
        class_examples: for each class, the ids of its examples in `images`.
        ways: N, classes per task.
        class_rotation: optional quarter turns per class (rotated copies count as new classes).
        normalization: optional per-channel (mean, std), each (C,), of pixels scaled to [0, 1]; episodes then
            hold (x / 255 - mean) / std instead of x / 255.
        split: the split's name, for error messages.
    """

    def __init__(
        self,
        images: Tensor,
        class_examples: Sequence[Tensor],
        ways: int,
        class_rotation: Tensor | None = None,
        normalization: tuple[Tensor, Tensor] | None = None,
        split: str = "",
    ) -> None:
        if ways > len(class_examples):
            raise DataError(
                f"data.ways={ways} but the {split + ' ' if split else ''}split has only {len(class_examples)} "
                "classes; lower data.ways or give the split more classes"
            )
        self.images = images
        self.class_examples = list(class_examples)
        self.ways = ways
        self.class_rotation = class_rotation
        self.normalization = None
        if normalization is not None:
            mean, std = (torch.as_tensor(t, dtype=torch.float32).view(-1, 1, 1) for t in normalization)
            self.normalization = (mean, std)  # (C, 1, 1): broadcast over (..., C, H, W)
        self.min_examples = min(len(ids) for ids in self.class_examples)

    @property
    def num_classes(self) -> int:
        return len(self.class_examples)

    @property
    def num_examples(self) -> int:
        return sum(len(ids) for ids in self.class_examples)

    def to_float(self, x: Tensor) -> Tensor:
        """uint8 pixels -> float32 in [0, 1], normalised per channel when the source has statistics."""
        x = x.float().div_(255.0)
        if self.normalization is not None:
            mean, std = self.normalization
            x = x.sub_(mean).div_(std)
        return x

    def check_shots(self, shots: int, queries: int, split: str) -> None:
        if shots + queries > self.min_examples:
            raise DataError(
                f"{split}: shots+queries={shots + queries} but a class of this split has only "
                f"{self.min_examples} examples; lower data.shots/data.queries (or train_shots/train_queries)"
            )

    def sample_task(self, generator: torch.Generator, shots: int, queries: int) -> Episode:
        """One N-way task: N classes, then `shots + queries` examples of each, then a shuffle of each set.

        The random draws are a fixed sequence of `randperm`s of `generator` (classes, labels, each class's
        examples, the support order, the query order); the index arithmetic runs in NumPy and the images move
        in one gather, so a task costs a few tensor operations whatever N is (the training loader draws tens of
        thousands of tasks per run)."""
        return Episode(*(field[0] for field in self.sample_tasks([generator], shots, queries)))

    def sample_tasks(self, generators: Sequence[torch.Generator], shots: int, queries: int) -> Episode:
        """Tasks stacked on a leading dimension, task t drawn from `generators[t]` as `sample_task` draws it: the
        draws and index arithmetic task by task, then the images of all tasks in one gather and one conversion
        per set (what `EpisodeBatches` calls for a meta-batch)."""
        rows, turns, labels = zip(*(self._task_rows(g, shots, queries) for g in generators), strict=True)
        split, tasks = self.ways * shots, len(generators)
        ids, y = np.stack(rows), torch.from_numpy(np.stack(labels))
        turned = np.stack(turns) if self.class_rotation is not None else None
        x = [self._images(ids[:, part].reshape(-1), None if turned is None else turned[:, part].reshape(-1))
             for part in (slice(None, split), slice(split, None))]  # fmt: skip
        x = [xs.view(tasks, -1, *xs.shape[1:]) for xs in x]
        return Episode(x[0], y[:, :split].contiguous(), x[1], y[:, split:].contiguous())

    def _task_rows(self, generator: torch.Generator, shots: int, queries: int):
        """One task's example ids, quarter turns (None without class rotation) and labels, each (N*(K+Q),) in
        output order: the shuffled support set, then the shuffled query set."""
        m, ways = shots + queries, self.ways
        classes = torch.randperm(self.num_classes, generator=generator)[:ways].tolist()
        labels = torch.randperm(ways, generator=generator).numpy()
        picked = np.stack(
            [self._ids[c][torch.randperm(len(self._ids[c]), generator=generator).numpy()[:m]] for c in classes]
        )  # (N, K+Q) example ids
        ps = torch.randperm(ways * shots, generator=generator).numpy()
        pq = torch.randperm(ways * queries, generator=generator).numpy()
        rows = np.concatenate([_class_major(ways, m, 0, shots)[ps], _class_major(ways, m, shots, m)[pq]])
        turns = None if self.class_rotation is None else np.repeat(self._turns[classes], m)[rows]
        y = np.concatenate([np.repeat(labels, shots)[ps], np.repeat(labels, queries)[pq]])
        return picked.reshape(-1)[rows], turns, y

    def _images(self, ids: np.ndarray, turns: np.ndarray | None) -> Tensor:
        """Float images of example ids, (R, C, H, W), in one gather (rotated copies turned)."""
        index = torch.from_numpy(ids)
        x = self.images[index] if turns is None else self._rotated(index, turns)
        if x.dim() == 3:
            x = x.unsqueeze(1)  # add the channel dimension of grey images
        return self.to_float(x)

    @functools.cached_property
    def _ids(self) -> list[np.ndarray]:
        return [ids.numpy() for ids in self.class_examples]

    @functools.cached_property
    def _turns(self) -> np.ndarray:
        return (self.class_rotation % 4).numpy()

    def _rotated(self, ids: Tensor, turns: np.ndarray) -> Tensor:
        """`images[ids]`, row i turned `turns[i]` quarter turns (`torch.rot90` over the last two dims): square
        images in one gather from their four turned copies, others one `rot90` per distinct turn."""
        if self.images.shape[-1] == self.images.shape[-2]:
            return self._turned_images[torch.from_numpy(turns), ids]
        x = self.images[ids]
        for k in set(turns.tolist()) - {0}:
            rows = torch.from_numpy(np.flatnonzero(turns == k))
            x[rows] = torch.rot90(x[rows], k, dims=(-2, -1))
        return x

    @functools.cached_property
    def _turned_images(self) -> Tensor:
        """(4, M, *x): the images turned 0-3 quarter turns (`torch.rot90` over the last two dims), built on first
        use: a task's rotated classes then cost no more than its others (Omniglot's training split: 4 x 25 MB)."""
        return torch.stack([torch.rot90(self.images, k, dims=(-2, -1)) for k in range(4)])


@functools.lru_cache(maxsize=64)
def _class_major(ways: int, per_class: int, start: int, stop: int) -> np.ndarray:
    """Flat positions (class i, example j) = i * per_class + j for j in [start, stop), class-major (cached: every
    task of a split asks for the same few; callers only index with it)."""
    return (np.arange(ways)[:, None] * per_class + np.arange(start, stop)).reshape(-1)


@contextlib.contextmanager
def seeded_globals(seed: int):
    """Seed Python's, NumPy's and torch's global generators inside the block and restore them after it: a taskset
    that draws from them (learn2learn's do) then gives the same task for the same episode, and the run's own
    random streams are left as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TaskSetTasks:
    """Adapter for a learn2learn-style taskset: `taskset.sample() -> (x, y)`; labels are remapped to 0..N-1 in
    sorted order of the taskset's own (so raw class ids work too).

    Each class's first `shots` examples become the support set, the next `queries` the query set; each set is
    then shuffled (as in `ClassificationTasks`, so Reptile's consecutive mini-batches mix classes). The global
    random generators are seeded from the episode's generator around `sample()`, so a taskset drawing from them
    (or from nothing random) gives episodes that are a pure function of (seed, split, index).
    """

    def __init__(self, taskset, origin: str = "") -> None:
        if not callable(getattr(taskset, "sample", None)):
            raise DataError(f"{type(taskset).__name__} has no .sample() -> (x, y); wrap it to provide one")
        self.taskset = taskset
        # who built the taskset, for messages, e.g. "data.factory=pkg.mod:make, split train"
        self.origin = origin

    def _name(self) -> str:
        own = f"{type(self.taskset).__name__}.sample()"
        return f"{own} ({self.origin})" if self.origin else own

    def draw(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One raw task, x as the taskset gives it and labels remapped to 0..N-1."""
        with seeded_globals(int(torch.randint(2**62, (), generator=generator))):
            try:
                task = self.taskset.sample()
            except Exception as error:  # the user's code: its traceback stays, with a note saying whose it is
                error.add_note(f"raised by {self._name()}")
                raise
        try:
            x, y = task
            x, y = torch.as_tensor(x), torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as error:  # not a pair, or not convertible to tensors
            shown = repr(task) if len(repr(task)) <= 60 else repr(task)[:57] + "..."
            raise DataError(
                f"{self._name()} returned {type(task).__name__} {shown}, not (x, y) tensors of one task's examples "
                f"and labels ({error})"
            ) from error
        if x.ndim < 1 or y.shape != x.shape[:1]:
            raise DataError(f"{self._name()} returned x of shape {tuple(x.shape)} and y of "
                            f"shape {tuple(y.shape)}; give one label per example")  # fmt: skip
        return x, torch.unique(y, return_inverse=True)[1]

    def check_shots(self, shots: int, queries: int, split: str) -> None:
        """Draw one task and check it has shots+queries examples of each class."""
        _, y = self.draw(torch.Generator().manual_seed(0))
        fewest = int(torch.bincount(y).min())
        if shots + queries > fewest:
            raise DataError(
                f"{split}: shots+queries={shots + queries} but the taskset gave {fewest} examples for a class; "
                "lower data.shots/data.queries (or train_shots/train_queries) or draw more samples per class"
            )

    def sample_task(self, generator: torch.Generator, shots: int, queries: int) -> Episode:
        x, y = self.draw(generator)
        order = torch.argsort(y, stable=True)  # group by class, keep the taskset's order within a class
        x, y = x[order], y[order]
        counts = torch.bincount(y)
        if bool((counts < shots + queries).any()):
            raise DataError(
                f"the taskset gave {counts.min().item()} examples for a class; shots+queries={shots + queries}"
            )
        rank = torch.arange(len(y)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        support, query = rank < shots, (rank >= shots) & (rank < shots + queries)
        ps = torch.randperm(int(support.sum()), generator=generator)
        pq = torch.randperm(int(query.sum()), generator=generator)
        return Episode(x[support][ps], y[support][ps], x[query][pq], y[query][pq])


class EpisodeBatches(Dataset):
    """Map-style dataset whose item b is one batch of episodes, stacked on a leading task dimension.

    `ids` is a (lazy) range of episode indices this process draws; item b holds ids[b*batch_size:(b+1)*batch_size].
    Training passes range(start*M + rank, total*M, world_size), evaluation range(rank, episodes, world_size).
    """

    def __init__(
        self, source: TaskSource, seed: int, split: str, shots_queries: tuple[int, int], ids: range, batch_size: int
    ) -> None:
        self.source, self.seed, self.split = source, seed, split
        self.shots, self.queries = shots_queries
        self.ids, self.batch_size = ids, batch_size

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __getitem__(self, b: int) -> Episode:
        if not 0 <= b < len(self):
            raise IndexError(b)
        chunk = self.ids[b * self.batch_size : (b + 1) * self.batch_size]
        if hasattr(self.source, "sample_tasks"):  # the whole meta-batch at once, the same episodes
            generators = [episode_generator(self.seed, self.split, i) for i in chunk]
            return self.source.sample_tasks(generators, self.shots, self.queries)
        episodes = []
        for i in chunk:
            try:
                episodes.append(sample_episode(self.source, self.seed, self.split, i, self.shots, self.queries))
            except Exception as error:
                if not isinstance(error, UserError):  # a one-line refusal is left as it is
                    error.add_note(f"while drawing episode {i} of the {self.split} split (seed {self.seed})")
                raise
        return stack_episodes(episodes)
