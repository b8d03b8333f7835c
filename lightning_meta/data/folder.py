"""Folder-per-class datasets: `<root>/{train,val,test}/<class>/<image>`, or `<root>/<class>/<image>` split here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_meta.data.cache import cached
from lightning_meta.data.images import (
    ImageDataModule,
    channel_statistics,
    channels_of,
    class_table,
    decode_files,
    image_files,
)
from lightning_meta.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def class_folders(folder: Path) -> list[Path]:
    """The class folders of `folder` (sub-folders holding at least one image), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and image_files(p)) if folder.is_dir() else []


def load_classes(folders: list[Path], image_size: int, channels: int, cache: Path, statistics: bool = False) -> dict:
    """Decode the images of `folders` (one class each) to {"images": (M, C, S, S) uint8, "label": (M,),
    "names": class names} (and their channels' "mean" and "std" if `statistics`), cached at `cache` and rebuilt
    when any image is added, removed or changed."""
    files = [image_files(folder) for folder in folders]
    sources = [path for paths in files for path in paths]

    def build() -> dict:
        label = torch.cat([torch.full((len(paths),), c) for c, paths in enumerate(files)])
        images = decode_files(sources, image_size, channels)
        data = {"images": images, "label": label, "names": [folder.name for folder in folders]}
        if statistics:
            data["mean"], data["std"] = channel_statistics(images)
        return data

    return cached(cache, build, sources)


class FolderDataModule(ImageDataModule):
    """N-way K-shot classification over one folder of images per class.

    Two layouts under `root`: already split, `<root>/{train,val,test}/<class>/<image>` (`val/` optional); or not,
    `<root>/<class>/<image>`, whose classes are split here, by `split_files` (text files listing one class name per
    line) or else by `split_ratio` over a `split_seed` shuffle. Images are decoded once to a cache beside them.

    Args:
        root: the data folder.
        image_size: side the images are resized to.
        channels: 1 (grey) or 3 (RGB); None: 1 when every class's first image is grey, else 3.
        split_ratio: fractions of the classes for train, val, test (unsplit layout).
        split_files: {"train": file, "val": file, "test": file} naming each split's classes (unsplit layout;
            relative paths are read from `root`); "val" may be left out.
        split_seed: seed of the class shuffle for `split_ratio` (fixed, independent of the run's seed).
        normalize: normalise each channel with the training classes' mean and std.
        meta_batch_size: tasks per meta-iteration; **kwargs: see `EpisodicDataModule`.
    """

    def __init__(
        self,
        root: str = "data/my_dataset",
        *,
        image_size: int = 84,
        channels: int | None = None,
        split_ratio: tuple[float, float, float] = (0.64, 0.16, 0.2),
        split_files: dict[str, str] | None = None,
        split_seed: int = 0,
        normalize: bool = False,
        meta_batch_size: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(normalize=normalize, meta_batch_size=meta_batch_size, **kwargs)
        if channels not in (None, 1, 3):
            raise ConfigError(f"data.channels={channels}; use 1 (grey), 3 (RGB) or null (follow the images)")
        if len(split_ratio) != 3 or min(split_ratio) < 0 or abs(sum(split_ratio) - 1) > 1e-6:
            raise ConfigError(
                f"data.split_ratio={list(split_ratio)}; give 3 fractions >= 0 (train, val, test) summing to 1"
            )
        self.root, self.image_size, self.channels = Path(root), image_size, channels
        self.split_ratio, self.split_files, self.split_seed = tuple(split_ratio), split_files, split_seed

    @property
    def presplit(self) -> bool:
        return bool(class_folders(self.root / "train"))

    def _folders(self) -> dict[str, list[Path]]:
        """The class folders of each split."""
        if self.presplit:
            folders = {split: class_folders(self.root / split) for split in SPLITS}
            if not folders["test"]:
                raise DataError(f"{self.root / 'test'} holds no class folders; meta-testing needs a test split")
            return {split: f for split, f in folders.items() if f}
        classes = class_folders(self.root)
        if not classes:
            raise DataError(
                f"no images under {self.root}: put one folder of images per class there, as <root>/<class>/<image> "
                "(split here) or <root>/{train,val,test}/<class>/<image>, or set data.root"
            )
        return self._split_classes(classes)

    def _split_classes(self, classes: list[Path]) -> dict[str, list[Path]]:
        by_name = {p.name: p for p in classes}
        if self.split_files:
            chosen: dict[str, list[Path]] = {}
            for split, file in self.split_files.items():
                path = Path(file) if Path(file).is_absolute() else self.root / file
                if split not in SPLITS:
                    raise ConfigError(f"data.split_files.{split}={file}: {split!r} is not a split; give the keys "
                                      "train, val (optional) and test, each naming a class list")  # fmt: skip
                if not path.is_file():
                    raise DataError(f"data.split_files.{split}={file}: {path} is not a file; give a text "
                                    "file listing one class name per line (relative: read from data.root)")  # fmt: skip
                names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
                missing = [n for n in names if n not in by_name]
                if missing:
                    raise DataError(f"{path} lists {missing[0]!r}, which is not a class folder of {self.root}")
                chosen[split] = [by_name[n] for n in names]
            seen = [n.name for f in chosen.values() for n in f]
            if len(seen) != len(set(seen)) or "train" not in chosen or "test" not in chosen:
                raise ConfigError("data.split_files must list train and test classes, each class in one split only")
            return chosen
        order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val, n_test = (round(r * len(classes)) for r in self.split_ratio[1:])
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        if not parts["train"] or not parts["test"]:
            raise DataError(f"data.split_ratio={list(self.split_ratio)} leaves a split of the {len(classes)} "
                            "classes empty; give train and test a larger share")  # fmt: skip
        return {split: [classes[i] for i in sorted(ids)] for split, ids in parts.items() if ids}

    def _channels(self, folders: dict[str, list[Path]]) -> int:
        if self.channels is None:  # first image of every class, header only
            self.channels = channels_of([image_files(f)[0] for fs in folders.values() for f in fs])
        return self.channels

    def input_shape(self) -> tuple[int, ...]:
        return (self._channels(self._folders()), self.image_size, self.image_size)

    def prepare_data(self) -> None:
        self.load_splits()

    def load_splits(self) -> dict[str, dict]:
        folders = self._folders()
        channels, size = self._channels(folders), self.image_size
        if self.presplit:
            self.cache_paths = [self.root / f"{split}_{size}px_{channels}c.pt" for split in folders]
            loaded = {
                s: load_classes(f, size, channels, c)
                for (s, f), c in zip(folders.items(), self.cache_paths, strict=True)
            }
            return {s: {"images": d["images"], "classes": class_table(d["label"], range(len(d["names"])))}
                    for s, d in loaded.items()}  # fmt: skip
        self.cache_paths = [self.root / f"classes_{size}px_{channels}c.pt"]
        data = load_classes(class_folders(self.root), size, channels, self.cache_paths[0])  # every class, any split
        index = {name: c for c, name in enumerate(data["names"])}
        return {s: {"images": data["images"], "classes": class_table(data["label"], [index[p.name] for p in fs])}
                for s, fs in folders.items()}  # fmt: skip
