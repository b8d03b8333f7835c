"""Episodic data: tasks as pure functions of (seed, split, index), served one meta-batch per batch."""

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episode import ClassificationTasks, Episode, EpisodeBatches, TaskSetTasks, sample_episode
from lightning_meta.data.folder import FolderDataModule
from lightning_meta.data.omniglot import OmniglotDataModule
from lightning_meta.data.sinusoid import SinusoidDataModule, SinusoidTasks

__all__ = [
    "ClassificationTasks",
    "Episode",
    "EpisodeBatches",
    "EpisodicDataModule",
    "FolderDataModule",
    "OmniglotDataModule",
    "SinusoidDataModule",
    "SinusoidTasks",
    "TaskSetTasks",
    "sample_episode",
]
