"""Episodic data: tasks as pure functions of (seed, split, index), served one meta-batch per batch."""

from lightning_meta.data.cifar import CIFARFSDataModule, FC100DataModule
from lightning_meta.data.datamodule import EpisodicDataModule, fit_model_input
from lightning_meta.data.episode import ClassificationTasks, Episode, EpisodeBatches, TaskSetTasks, sample_episode
from lightning_meta.data.folder import FolderDataModule
from lightning_meta.data.images import ImageDataModule
from lightning_meta.data.miniimagenet import MiniImageNetDataModule
from lightning_meta.data.omniglot import OmniglotDataModule
from lightning_meta.data.sinusoid import SinusoidDataModule, SinusoidTasks
from lightning_meta.data.taskset import TaskSetDataModule

__all__ = [
    "CIFARFSDataModule",
    "ClassificationTasks",
    "Episode",
    "EpisodeBatches",
    "EpisodicDataModule",
    "FC100DataModule",
    "FolderDataModule",
    "ImageDataModule",
    "MiniImageNetDataModule",
    "OmniglotDataModule",
    "SinusoidDataModule",
    "SinusoidTasks",
    "TaskSetDataModule",
    "TaskSetTasks",
    "fit_model_input",
    "sample_episode",
]
