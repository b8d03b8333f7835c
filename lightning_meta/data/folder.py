"""Folder-per-class datasets (Mini-ImageNet, or a user's own images): `<root>/<split>/<class>/<image>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episode import ClassificationTasks, TaskSource, cached

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def decode_folder(split_dir: Path, image_size: int, channels: int) -> dict:
    """Decode every image of `split_dir/<class>/` to uint8 (M, C, S, S); classes in sorted order."""
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    mode = {1: "L", 3: "RGB"}[channels]
    images, labels = [], []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            with Image.open(path) as img:
                img = img.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            images.append(data.view(image_size, image_size, channels).permute(2, 0, 1))
            labels.append(label)
    return {"images": torch.stack(images), "label": torch.tensor(labels), "classes": [c.name for c in classes]}


def load_folder(split_dir: Path, image_size: int, channels: int) -> dict:
    """The decoded split, cached as `<split>_<size>px_<channels>c.pt` beside the split folder."""
    cache = split_dir.parent / f"{split_dir.name}_{image_size}px_{channels}c.pt"
    return cached(cache, lambda: decode_folder(split_dir, image_size, channels))


class FolderDataModule(EpisodicDataModule):
    """N-way K-shot classification over `<root>/{train,val,test}/<class>/<image>` (Mini-ImageNet's layout after the
    usual Ravi & Larochelle split, or any folder-per-class data). Images are decoded once and cached.

    Args:
        root: folder holding the `train/`, `val/` and `test/` split folders (`val/` may be absent).
        image_size: side the images are resized to (84 for Mini-ImageNet).
        channels: 3 (RGB) or 1 (grey).
        meta_batch_size: tasks per meta-iteration (MAML's Mini-ImageNet value: 4).
        **kwargs: the episode shape and sizes, see `EpisodicDataModule`.
    """

    def __init__(
        self,
        root: str = "data/miniimagenet",
        *,
        image_size: int = 84,
        channels: int = 3,
        meta_batch_size: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(meta_batch_size=meta_batch_size, **kwargs)
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels}; use 1 (grey) or 3 (RGB)")
        self.root, self.image_size, self.channels = Path(root), image_size, channels

    def prepare_data(self) -> None:
        if not (self.root / "train").is_dir():
            raise FileNotFoundError(
                f"{self.root / 'train'} does not exist. Put one folder per class under {self.root}/train, "
                f"{self.root}/val and {self.root}/test (Mini-ImageNet cannot be downloaded automatically: use the "
                "Ravi & Larochelle split), or set data.root"
            )
        for split in ("train", "val", "test"):
            if (self.root / split).is_dir():
                load_folder(self.root / split, self.image_size, self.channels)

    def build_sources(self) -> dict[str, TaskSource]:
        self.prepare_data()
        sources: dict[str, TaskSource] = {}
        for split in ("train", "val", "test"):
            if not (self.root / split).is_dir():
                continue
            data = load_folder(self.root / split, self.image_size, self.channels)
            label = data["label"]
            examples = [torch.nonzero(label == c).flatten() for c in range(len(data["classes"]))]
            sources[split] = ClassificationTasks(data["images"], examples, self.ways)
        if "test" not in sources:
            raise FileNotFoundError(f"{self.root / 'test'} does not exist; meta-testing needs a test split")
        return sources
