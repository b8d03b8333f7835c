"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 (32x32 RGB, 600 images per class), read from the standard
`cifar-100-python.tar.gz` archive (downloaded when absent)."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lightning_meta.data.cache import cached
from lightning_meta.data.folder import SPLITS
from lightning_meta.data.images import ImageDataModule, class_table
from lightning_meta.data.splits import CIFAR_FS, FC100
from lightning_meta.errors import DataError

ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
MEMBERS = ("train", "test", "meta")  # inside the archive's cifar-100-python/ folder


def download_cifar100(archive: Path) -> None:
    """Fetch the archive and check its MD5 (not exercised by the tests, which fake the connection)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial, digest = archive.with_name(archive.name + ".part"), hashlib.md5(usedforsecurity=False)
    fix = f"copy {ARCHIVE} (md5 {MD5}) into {archive.parent} by hand, or set data.root to a folder that has it"
    try:
        with urllib.request.urlopen(URL, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download {URL} ({error}); {fix}") from error
    if digest.hexdigest() != MD5:
        partial.unlink()
        raise DataError(f"the download of {URL} has md5 {digest.hexdigest()}, not {MD5}; run again or {fix}")
    partial.replace(archive)


def _text(value: Any) -> Any:
    """The archive was pickled by Python 2: keys and names come back as bytes."""
    return value.decode() if isinstance(value, bytes) else value


def _unpickle(f) -> dict:
    with f:
        return {_text(k): v for k, v in pickle.load(f, encoding="bytes").items()}


def _members(source: Path) -> dict[str, dict]:
    """train, test and meta, unpickled with str keys, from the archive or the folder it was extracted to."""
    try:
        if source.is_dir():
            return {name: _unpickle(open(source / "cifar-100-python" / name, "rb")) for name in MEMBERS}
        with tarfile.open(source, "r:gz") as tar:
            return {name: _unpickle(tar.extractfile(f"cifar-100-python/{name}")) for name in MEMBERS}
    except (KeyError, OSError, tarfile.TarError, EOFError, zlib.error, pickle.UnpicklingError) as error:
        raise DataError(
            f"{source} is not a readable CIFAR-100 python archive ({type(error).__name__}: {error}); it must hold "
            f"cifar-100-python/train, test and meta (md5 {MD5}): delete it to download it again"
        ) from error


def read_cifar100(source: Path) -> dict:
    """All 60,000 images, train and test files together (600 per class).

    Returns: {"images": (60000, 3, 32, 32) uint8, "fine": (60000,), "coarse": (60000,), "fine_names",
    "coarse_names"}.
    """
    parts = _members(source)
    try:
        images = np.concatenate([np.asarray(parts[s]["data"], dtype=np.uint8) for s in ("train", "test")])
        labels = {
            k: torch.tensor([*parts["train"][f"{k}_labels"], *parts["test"][f"{k}_labels"]]) for k in ("fine", "coarse")
        }
        names = {k: [_text(n) for n in parts["meta"][f"{k}_label_names"]] for k in ("fine", "coarse")}
    except (KeyError, TypeError, ValueError) as error:  # members of that name holding something else
        raise DataError(
            f"{source} holds cifar-100-python/train, test and meta, but not as the CIFAR-100 python version writes "
            f"them ({type(error).__name__}: {error}); replace it with the original archive (md5 {MD5})"
        ) from error
    return {
        "images": torch.from_numpy(images).view(-1, 3, 32, 32),  # rows are 1024 red, 1024 green, 1024 blue
        **labels,
        **{f"{k}_names": v for k, v in names.items()},
    }


class CIFAR100FewShot(ImageDataModule):
    """Base of CIFAR-FS and FC100: classes of CIFAR-100 split by a published list (`class_split`).

    Args:
        root: folder holding `cifar-100-python.tar.gz` (or its extracted `cifar-100-python/`) and the decoded cache.
        download: fetch the archive when it is missing (MD5-checked).
        normalize: normalise each channel with the training classes' mean and std.
        meta_batch_size: tasks per meta-iteration; **kwargs: see `EpisodicDataModule`.
    """

    name: ClassVar[str] = ""

    def __init__(
        self, root: str = "data/cifar100", *, download: bool = True, normalize: bool = True, meta_batch_size: int = 4,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(normalize=normalize, meta_batch_size=meta_batch_size, **kwargs)
        self.root, self.download = Path(root), download

    def input_shape(self) -> tuple[int, ...]:
        return (3, 32, 32)

    def source(self) -> Path:
        extracted, archive = self.root / "cifar-100-python", self.root / ARCHIVE
        if extracted.is_dir():
            return self.root
        if not archive.is_file():
            if not self.download:
                raise DataError(f"{archive} does not exist; copy {ARCHIVE} (md5 {MD5}) there or set data.download=true")
            download_cifar100(archive)
        return archive

    def prepare_data(self) -> None:
        self.load()

    def load(self) -> dict:
        source = self.source()
        files = [source / "cifar-100-python" / m for m in MEMBERS] if source.is_dir() else [source]
        self.cache_paths = [self.root / "cifar100_32px.pt"]
        return cached(self.cache_paths[0], lambda: read_cifar100(source), files)

    def class_split(self, data: dict) -> dict[str, list[int]]:
        """Fine class ids of each split."""
        raise NotImplementedError

    def load_splits(self) -> dict[str, dict]:
        data = self.load()
        return {s: {"images": data["images"], "classes": class_table(data["fine"], ids)}
                for s, ids in self.class_split(data).items()}  # fmt: skip


def _ids(names: list[str], wanted: list[str], what: str) -> list[int]:
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise DataError(f"the CIFAR-100 archive has no {what} {missing[0]!r}; it is not the original archive")
    return [names.index(n) for n in wanted]


class CIFARFSDataModule(CIFAR100FewShot):
    """CIFAR-FS (Bertinetto et al., 2019): 64 / 16 / 20 CIFAR-100 classes (`splits.CIFAR_FS`), 32x32."""

    name = "CIFAR-FS"

    def class_split(self, data: dict) -> dict[str, list[int]]:
        return {split: _ids(data["fine_names"], CIFAR_FS[split], "class") for split in SPLITS}


class FC100DataModule(CIFAR100FewShot):
    """FC100 (Oreshkin et al., 2018): CIFAR-100 split by superclass, 12 / 4 / 4 superclasses of 5 classes each
    (`splits.FC100`), so that train, val and test share no superclass."""

    name = "FC100"

    def class_split(self, data: dict) -> dict[str, list[int]]:
        fine, coarse = data["fine"], data["coarse"]
        superclass = torch.zeros(len(data["fine_names"]), dtype=torch.int64).index_put_((fine,), coarse)
        split = {}
        for s in SPLITS:
            wanted = set(_ids(data["coarse_names"], FC100[s], "superclass"))
            split[s] = [c for c in range(len(superclass)) if int(superclass[c]) in wanted]
        return split
