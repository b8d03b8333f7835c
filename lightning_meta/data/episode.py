"""Episodes as pure functions of (seed, split, index), and the task sources they are drawn from."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset


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


def sample_episode(source: TaskSource, seed: int, split: str, index: int, shots: int, queries: int) -> Episode:
    """Episode `index` of `split`: a pure function of its arguments."""
    generator = torch.Generator().manual_seed(episode_seed(seed, split, index))
    return source.sample_task(generator, shots, queries)


def cached(path: Path, build: Callable[[], dict]) -> dict:
    """`build()` once, saved to `path` and loaded from there afterwards. A folder that cannot be written (a
    read-only data mount) only costs decoding again on the next start."""
    if path.exists():
        return torch.load(path, weights_only=True)
    data = build()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch.save(data, partial)
        partial.replace(path)  # atomic: a concurrent reader never sees half a cache
    except OSError as error:
        warnings.warn(
            f"could not write the decoded cache {path} ({error}); it will be decoded again on the next start. "
            "Copy the data into a writable data.root to keep the cache",
            stacklevel=2,
        )
    return data


def stack_episodes(episodes: Sequence[Episode]) -> Episode:
    return Episode(*(torch.stack(field) for field in zip(*episodes, strict=True)))


class ClassificationTasks:
    """N-way tasks over a class -> example-ids table; images stay one uint8 tensor, indexed per task.

    Args:
        images: all examples of the split's source, uint8 (M, C, H, W) or (M, H, W).
        class_examples: for each class, the ids of its examples in `images`.
        ways: N, classes per task.
        class_rotation: optional quarter turns per class (rotated copies count as new classes).
    """

    def __init__(
        self,
        images: Tensor,
        class_examples: Sequence[Tensor],
        ways: int,
        class_rotation: Tensor | None = None,
    ) -> None:
        if ways > len(class_examples):
            raise ValueError(
                f"data.ways={ways} but the split has only {len(class_examples)} classes; "
                "lower data.ways or give the split more classes"
            )
        self.images = images
        self.class_examples = list(class_examples)
        self.ways = ways
        self.class_rotation = class_rotation
        self.min_examples = min(len(ids) for ids in self.class_examples)

    @property
    def num_classes(self) -> int:
        return len(self.class_examples)

    def check_shots(self, shots: int, queries: int, split: str) -> None:
        if shots + queries > self.min_examples:
            raise ValueError(
                f"{split}: shots+queries={shots + queries} but a class of this split has only "
                f"{self.min_examples} examples; lower data.shots/data.queries (or train_shots/train_queries)"
            )

    def sample_task(self, generator: torch.Generator, shots: int, queries: int) -> Episode:
        classes = torch.randperm(self.num_classes, generator=generator)[: self.ways]
        labels = torch.randperm(self.ways, generator=generator)
        blocks = []
        for c in classes.tolist():
            ids = self.class_examples[c]
            picked = ids[torch.randperm(len(ids), generator=generator)[: shots + queries]]
            block = self.images[picked]
            if self.class_rotation is not None and int(self.class_rotation[c]) % 4:
                block = torch.rot90(block, int(self.class_rotation[c]), dims=(-2, -1))
            blocks.append(block)
        x = torch.stack(blocks)  # (N, K+Q, *x) uint8
        if x.dim() == 4:
            x = x.unsqueeze(2)  # add the channel dimension of grey images
        y = labels[:, None].expand(-1, shots + queries)
        support_x, query_x = x[:, :shots].flatten(0, 1), x[:, shots:].flatten(0, 1)
        support_y, query_y = y[:, :shots].flatten(), y[:, shots:].flatten()
        # Shuffle within each set so no code can lean on class order (Reptile takes consecutive mini-batches).
        ps = torch.randperm(len(support_y), generator=generator)
        pq = torch.randperm(len(query_y), generator=generator)
        return Episode(support_x[ps].float().div_(255.0), support_y[ps], query_x[pq].float().div_(255.0), query_y[pq])


class TaskSetTasks:
    """Adapter for a learn2learn-style taskset: `taskset.sample() -> (x, y)`; labels are remapped to 0..N-1 in
    sorted order of the taskset's own (so raw class ids work too).

    Each class's first `shots` examples become the support set, the next `queries` the query set; each set is
    then shuffled (as in `ClassificationTasks`, so Reptile's consecutive mini-batches mix classes). The taskset
    draws from its own random state, so episodes are a pure function of the index only if the taskset is.
    """

    def __init__(self, taskset) -> None:
        if not callable(getattr(taskset, "sample", None)):
            raise TypeError(f"{type(taskset).__name__} has no .sample() -> (x, y); wrap it to provide one")
        self.taskset = taskset

    def sample_task(self, generator: torch.Generator, shots: int, queries: int) -> Episode:
        x, y = self.taskset.sample()
        y = torch.unique(torch.as_tensor(y), return_inverse=True)[1]
        order = torch.argsort(y, stable=True)  # group by class, keep the taskset's order within a class
        x, y = x[order], y[order]
        counts = torch.bincount(y)
        if bool((counts < shots + queries).any()):
            raise ValueError(
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
        return stack_episodes(
            [sample_episode(self.source, self.seed, self.split, i, self.shots, self.queries) for i in chunk]
        )
