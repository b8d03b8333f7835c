"""Mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle's split: 64/16/20 classes x 600 images, 84x84 RGB),
read from whichever of the three common layouts `data.root` holds."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightning_meta.data.cache import cached
from lightning_meta.data.folder import SPLITS, class_folders, load_classes
from lightning_meta.data.images import ImageDataModule, channel_statistics, class_table, decode_files
from lightning_meta.errors import DataError

PICKLE = "mini-imagenet-cache-{}.pkl"
LAYOUTS = {
    "pickle": [PICKLE.format(s) for s in SPLITS],
    "csv": [*(f"{s}.csv" for s in SPLITS), "images/"],
    "folder": [f"{s}/<class>/" for s in SPLITS],
}
HOW_TO = (
    "put one of these in data.root: (a) the pickles mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl, "
    "mini-imagenet-cache-test.pkl; (b) Ravi & Larochelle's train.csv, val.csv, test.csv (filename,label) with the "
    "images in images/<filename>; (c) train/<class>/*.jpg, val/<class>/*.jpg, test/<class>/*.jpg. None can be "
    "downloaded without an account"
)


def find_layout(root: Path) -> str:
    """The first layout whose files are all present; a DataError naming what is missing otherwise."""
    present = {
        "pickle": [(root / name).is_file() for name in LAYOUTS["pickle"]],
        "csv": [*((root / f"{s}.csv").is_file() for s in SPLITS), (root / "images").is_dir()],
        "folder": [bool(class_folders(root / s)) for s in SPLITS],
    }
    for layout, found in present.items():
        if all(found):
            return layout
    for layout, found in present.items():
        if any(found):
            missing = [name for name, ok in zip(LAYOUTS[layout], found, strict=True) if not ok]
            raise DataError(f"Mini-ImageNet at {root} lacks {', '.join(missing)} ({layout} layout); " + HOW_TO)
    raise DataError(f"no Mini-ImageNet found at data.root={root}; " + HOW_TO)


def _with_statistics(data: dict) -> dict:
    data["mean"], data["std"] = channel_statistics(data["images"])
    return data


def read_pickle(path: Path, image_size: int) -> dict:
    """{"images": (M, 3, 84, 84) uint8, "label": (M,), "names": class names} from a learn2learn-style pickle."""
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="latin1")  # latin1: also reads pickles written by Python 2
    except Exception as error:  # unreadable, truncated or not a pickle: unpickling random bytes raises many kinds
        raise DataError(
            f"{path} is not a readable pickle ({type(error).__name__}: {error}); download it again"
        ) from error
    if not isinstance(raw, dict) or not {"image_data", "class_dict"} <= set(raw):
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path} holds {keys}, not a Mini-ImageNet cache (keys image_data and class_dict)")
    images = np.asarray(raw["image_data"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != image_size:
        raise DataError(
            f"{path}: image_data is {images.dtype} {images.shape}, expected uint8 (N, {image_size}, {image_size}, "
            f"3); the pickles hold 84x84 images, so leave data.image_size at 84"
        )
    names = sorted(raw["class_dict"])
    label = torch.full((len(images),), -1, dtype=torch.int64)
    for c, name in enumerate(names):
        label[torch.as_tensor(list(raw["class_dict"][name]), dtype=torch.int64)] = c
    keep = label >= 0
    images = torch.from_numpy(images)[keep].permute(0, 3, 1, 2).contiguous()  # (M, 3, S, S)
    return _with_statistics({"images": images, "label": label[keep], "names": names})


def read_csv(root: Path, split: str) -> tuple[list[Path], list[str]]:
    """The image paths and labels listed in `<root>/<split>.csv` (header `filename,label`)."""
    path = root / f"{split}.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} ({error}); it must be a text file of filename,label rows") from error
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{path} does not start with the header filename,label")
    short = next((n for n, r in enumerate(rows[1:], 2) if r and len(r) < 2), None)
    if short is not None:
        raise DataError(f"{path} line {short} has no label; each row is filename,label")
    paths, labels = [root / "images" / r[0] for r in rows[1:] if r], [r[1] for r in rows[1:] if r]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{path} lists {missing.name}, which is not in {root / 'images'}")
    return paths, labels


def decode_csv(paths: list[Path], labels: list[str], image_size: int) -> dict:
    names = sorted(set(labels))
    index = {name: c for c, name in enumerate(names)}
    images = decode_files(paths, image_size, 3, Image.Resampling.LANCZOS)
    label = torch.tensor([index[name] for name in labels])
    return _with_statistics({"images": images, "label": label, "names": names})


class MiniImageNetDataModule(ImageDataModule):
    """Mini-ImageNet N-way K-shot classification, from the first of these layouts found under `root`:

    (a) `mini-imagenet-cache-{train,val,test}.pkl`: dicts with `image_data` (uint8 N x 84 x 84 x 3) and
    `class_dict` (class name -> row indices), as learn2learn and others distribute them; (b) Ravi & Larochelle's
    `{train,val,test}.csv` (`filename,label`) with the images under `images/`, resized on first use; (c)
    `{train,val,test}/<class>/<image>`. Each split is decoded once to `miniimagenet_<split>_<size>px.pt` beside
    the sources (memory-mapped when large) and rebuilt when they change.

    Args:
        root: the folder holding one of the layouts.
        image_size: side of the decoded images (84; the pickles hold only 84).
        normalize: normalise each channel with the training split's mean and std.
        meta_batch_size: tasks per meta-iteration (MAML's Mini-ImageNet value: 4); **kwargs: see
            `EpisodicDataModule`.
    """

    def __init__(
        self,
        root: str = "data/miniimagenet",
        *,
        image_size: int = 84,
        normalize: bool = True,
        meta_batch_size: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(normalize=normalize, meta_batch_size=meta_batch_size, **kwargs)
        self.root, self.image_size = Path(root), image_size

    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def prepare_data(self) -> None:
        self.load_splits()

    def load_split(self, layout: str, split: str) -> dict:
        size = self.image_size
        cache = self.root / f"miniimagenet_{split}_{size}px.pt"
        self.cache_paths.append(cache)
        if layout == "pickle":
            path = self.root / PICKLE.format(split)
            return cached(cache, lambda: read_pickle(path, size), [path])
        if layout == "csv":
            paths, labels = read_csv(self.root, split)
            return cached(cache, lambda: decode_csv(paths, labels, size), [self.root / f"{split}.csv", *paths])
        return load_classes(class_folders(self.root / split), size, 3, cache, statistics=True)

    def load_splits(self) -> dict[str, dict]:
        layout = find_layout(self.root)
        self.cache_paths = []
        splits = {}
        for split in SPLITS:
            data = self.load_split(layout, split)
            splits[split] = {"images": data["images"], "classes": class_table(data["label"], range(len(data["names"])))}
            if "mean" in data:
                splits[split].update(mean=data["mean"], std=data["std"])
        return splits
