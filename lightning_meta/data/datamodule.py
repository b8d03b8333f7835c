"""EpisodicDataModule: meta-batches of few-shot tasks, reproducible, resumable and split across DDP ranks."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Sampler

from lightning_meta.data.episode import ClassificationTasks, EpisodeBatches, TaskSource, sample_episode
from lightning_meta.errors import ConfigError


class StreamSampler(Sampler[int]):
    """Meta-batches `start`..`stop`-1 of the training stream. Its length is `stop`, the whole run: Lightning
    counts a resumed epoch's batches on from the step it resumed at and ends the epoch at this length."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop


class StreamLoader(DataLoader):
    """The training loader. Resumable by construction (it starts at the trainer's `global_step`), so it has no
    state to save; the two methods tell Lightning so, which otherwise warns on every mid-epoch resume."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class EpisodicDataModule(pl.LightningDataModule):
    """Serves one meta-batch per DataLoader batch.

    Training meta-batch t holds tasks t*M .. t*M+M-1 of the "train" stream; under DDP rank r of R takes tasks
    t*M+r, t*M+r+R, ... (disjoint, their union is the 1-process meta-batch). The stream restarts at the trainer's
    `global_step`, so a resumed run continues it exactly. Validation and test episodes 0..E-1 are fixed by the seed.
    Subclasses implement `build_sources`.

    Args:
        ways: N, classes per task.
        shots: K, support examples per class at evaluation (and training unless `train_shots` is set).
        queries: Q, query examples per class at evaluation (and training unless `train_queries` is set).
        meta_batch_size: tasks per meta-iteration, over all ranks.
        val_episodes: fixed validation episodes per validation run (0 disables validation).
        test_episodes: fixed meta-test episodes.
        seed: seeds the episode streams (mixed with split and index, never with the rank).
        train_shots: support examples per class in meta-training (Reptile trains with 10 even when tested 1-shot).
        train_queries: query examples per class in meta-training.
        eval_batch_size: episodes per evaluation batch on each rank (default: meta_batch_size).
        num_workers: DataLoader worker processes.
        train_tasks: meta-train on training tasks 0..train_tasks-1 only, over and over (debug=overfit); null: new
            tasks every meta-iteration.
    """

    task: ClassVar[str] = "classification"

    def __init__(
        self,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        meta_batch_size: int = 32,
        val_episodes: int = 100,
        test_episodes: int = 600,
        seed: int = 0,
        train_shots: int | None = None,
        train_queries: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_tasks: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in dict(ways=ways, shots=shots, meta_batch_size=meta_batch_size).items():
            if value < 1:
                raise ConfigError(f"data.{name}={value}; it must be at least 1")
        for name, value in dict(queries=queries, val_episodes=val_episodes, test_episodes=test_episodes).items():
            if value < 0:
                raise ConfigError(f"data.{name}={value}; it must be 0 or more")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.meta_batch_size = meta_batch_size
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.seed = seed
        self.train_shots = shots if train_shots is None else train_shots
        self.train_queries = queries if train_queries is None else train_queries
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size={eval_batch_size}; give 1 or more episodes per evaluation "
                              "batch, or null for data.meta_batch_size")  # fmt: skip
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers}; give 0 (load in the main process) or more worker "
                              "processes")  # fmt: skip
        self.eval_batch_size = meta_batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        if train_tasks is not None and train_tasks < 1:
            raise ConfigError(f"data.train_tasks={train_tasks}; give 1 or more, or null for new tasks every step")
        self.train_tasks = train_tasks
        self.sources: dict[str, TaskSource] = {}
        self.cache_paths: list[Path] = []  # decoded caches this dataset reads, for the setup line

    def build_sources(self) -> dict[str, TaskSource]:
        """The task source of each split ("train", "val", "test")."""
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. (C, H, W); the network's input layer is sized from it. This default reads
        it from a training episode (subclasses that know it without reading the data say so)."""
        self.setup()
        return tuple(sample_episode(self.sources["train"], self.seed, "train", 0, 1, 0).support_x.shape[1:])

    def setup(self, stage: str | None = None) -> None:
        if self.sources:
            return
        self.sources = self.build_sources()
        for split, source in self.sources.items():
            if hasattr(source, "check_shots"):
                train = split == "train"
                shots_queries = (self.train_shots, self.train_queries) if train else (self.shots, self.queries)
                source.check_shots(*shots_queries, split)
        rank_zero_info(self.describe())

    def describe(self) -> str:
        """One line: classes and examples per split, example shape, cache path(s)."""
        splits = []
        for split, source in self.sources.items():
            if isinstance(source, ClassificationTasks):
                splits.append(f"{split} {source.num_classes} classes / {source.num_examples} examples")
            else:
                splits.append(f"{split} {type(source).__name__}")
        shape = "x".join(str(n) for n in self.input_shape())
        cache = ", ".join(str(p) for p in self.cache_paths) or "none"
        return f"{type(self).__name__}: {'; '.join(splits)}; examples {shape}; cache {cache}"

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: EpisodeBatches) -> DataLoader:
        # batch_size=None: the dataset already returns whole meta-batches.
        return DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        if self.meta_batch_size % world:
            raise ConfigError(
                f"data.meta_batch_size={self.meta_batch_size} does not split evenly over {world} processes; "
                f"use a multiple of {world} (trainer.devices x trainer.num_nodes)"
            )
        trainer = self.trainer
        start = trainer.global_step if trainer is not None else 0
        if trainer is None or trainer.max_steps is None or trainer.max_steps < 0:
            raise ConfigError("set trainer.max_steps (the number of meta-iterations); the task stream is sized by it")
        stop = max(trainer.max_steps, start + 1)
        ids = range(rank, stop * self.meta_batch_size, world)  # item t: this rank's share of meta-batch t
        if self.train_tasks:  # the same few tasks again and again (debug=overfit)
            ids = [i % self.train_tasks for i in ids]
        shots_queries = (self.train_shots, self.train_queries)
        dataset = EpisodeBatches(
            self.sources["train"], self.seed, "train", shots_queries, ids, self.meta_batch_size // world
        )
        return StreamLoader(
            dataset, batch_size=None, sampler=StreamSampler(start, stop), num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def eval_batches(self, split: str, episodes: int) -> EpisodeBatches:
        """This rank's share of the fixed evaluation episodes 0..episodes-1 of `split`."""
        rank, world = self._rank_world()
        ids = range(rank, episodes, world)
        return EpisodeBatches(
            self.sources[split], self.seed, split, (self.shots, self.queries), ids, self.eval_batch_size
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_episodes == 0 or "val" not in self.sources:
            return []
        return self._loader(self.eval_batches("val", self.val_episodes))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_batches("test", self.test_episodes))


def fit_model_input(model: DictConfig, shape: tuple[int, ...]) -> None:
    """Write the data's example shape into the model config's input arguments, so that the network's input layer
    follows the data: `in_channels` and `image_size` of an image backbone, `in_features` of a vector one."""
    target = model.get("_target_", "the model")
    if "in_channels" in model or "image_size" in model:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ConfigError(
                f"{target} takes square images (C, S, S) but the data's examples have shape {tuple(shape)}; "
                "choose another model= (e.g. model=mlp for vectors) or resize the data (data.image_size)"
            )
        updates = {"in_channels": shape[0], "image_size": shape[1]}
    elif "in_features" in model:
        if len(shape) != 1:
            raise ConfigError(
                f"{target} takes vectors (in_features) but the data's examples have shape {tuple(shape)}; "
                "choose model=conv4 or model=conv4_rgb for images"
            )
        updates = {"in_features": shape[0]}
    else:
        return
    for key, value in updates.items():
        if key in model:
            model[key] = int(value)
