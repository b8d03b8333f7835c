"""Image datasets decoded once to uint8 tensors: decoding helpers and the shared `ImageDataModule`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episode import ClassificationTasks, TaskSource
from lightning_meta.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def channels_of(paths: Sequence[Path]) -> int:
    """1 when every image is grey, else 3 (reads only the headers)."""
    for path in paths:
        try:
            with Image.open(path) as img:
                if img.mode not in GREY_MODES:
                    return 3
        except OSError as error:  # PIL's UnidentifiedImageError too
            raise DataError(f"cannot read the image {path} ({error}); delete or replace it") from error
    return 1


def decode_files(paths: Sequence[Path], image_size: int, channels: int, resample=Image.Resampling.BILINEAR):
    """Decode and resize images to uint8 (M, C, S, S), in the order given."""
    mode = {1: "L", 3: "RGB"}[channels]
    out = torch.empty(len(paths), channels, image_size, image_size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img = img.convert(mode).resize((image_size, image_size), resample)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except OSError as error:
            raise DataError(f"cannot decode the image {path} ({error}); delete or replace it") from error
        out[i] = data.view(image_size, image_size, channels).permute(2, 0, 1)
    return out


def channel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1], exact: from each channel's
    histogram of the 256 pixel values, counted over chunks (a Mini-ImageNet split does not fit in memory as floats).

    Shapes: images (M, C, H, W) -> mean (C,), std (C,).
    """
    counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(block[:, c].flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    std = ((counts * (values - mean[:, None]).square()).sum(1) / total).sqrt()
    return mean.float(), std.float()


def class_table(label: torch.Tensor, classes: Sequence[int]) -> list[torch.Tensor]:
    """The example ids of each class in `classes`, in that order."""
    order = torch.argsort(label, stable=True)
    counts = torch.bincount(label, minlength=max(classes, default=0) + 1)
    starts = torch.cumsum(counts, 0) - counts
    return [order[starts[c] : starts[c] + counts[c]] for c in classes]


class ImageDataModule(EpisodicDataModule):
    """Base of the image datasets: each split is a uint8 image tensor with a class -> example-ids table, turned into
    `ClassificationTasks`, optionally normalised per channel with the training split's statistics.

    Subclasses implement `load_splits() -> {split: {"images": (M, C, S, S) uint8, "classes": [ids per class]}}`
    (a split's dict may carry precomputed "mean" and "std") and `input_shape()`.

    Args:
        normalize: feed (x/255 - mean) / std per channel, with the training split's mean and std, instead of x/255.
        **kwargs: the episode shape and sizes, see `EpisodicDataModule`.
    """

    def __init__(self, *, normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalize = normalize
        self.normalization: tuple[torch.Tensor, torch.Tensor] | None = None

    def load_splits(self) -> dict[str, dict]:
        raise NotImplementedError

    def build_sources(self) -> dict[str, TaskSource]:
        splits = self.load_splits()
        if self.normalize:
            train = splits["train"]
            self.normalization = (train["mean"], train["std"]) if "mean" in train else None
            if self.normalization is None:
                self.normalization = channel_statistics(torch.cat([train["images"][ids] for ids in train["classes"]]))
        return {
            split: ClassificationTasks(data["images"], data["classes"], self.ways, None, self.normalization, split)
            for split, data in splits.items()
        }
