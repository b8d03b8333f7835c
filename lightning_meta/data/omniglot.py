"""Omniglot (Lake et al., 2015): 1623 handwritten characters x 20 drawers, read from the two official archives."""

from __future__ import annotations

import io
import re
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lightning_meta.data.cache import cached
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episode import ClassificationTasks, TaskSource
from lightning_meta.errors import ConfigError, DataError

ARCHIVES = ("images_background", "images_evaluation")
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{}.zip"
_PNG = re.compile(r"images_(?:background|evaluation)/([^/]+)/(character\d+)/(\d+)_(\d+)\.png$")


def download_omniglot(folder: Path) -> None:
    """Fetch the official archives that are missing from `folder` (not exercised by the tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:
        target = folder / f"{name}.zip"
        if target.exists() or (folder / name).is_dir():
            continue
        partial = target.with_suffix(".zip.part")
        try:
            urllib.request.urlretrieve(URL.format(name), partial)
        except OSError as error:
            raise DataError(
                f"could not download {URL.format(name)} ({error}); copy images_background.zip and "
                f"images_evaluation.zip into {folder} by hand, or point data.root at a folder that has them"
            ) from error
        partial.rename(target)


def archive_members(folder: Path, name: str):
    """Yield (relative path, PNG bytes) from `<name>.zip` or from its extracted folder."""
    archive, extracted = folder / f"{name}.zip", folder / name
    if extracted.is_dir():
        for path in sorted(extracted.rglob("*.png")):
            try:
                data = path.read_bytes()
            except OSError as error:
                raise DataError(f"cannot read {path} ({error.strerror}); check its permissions, or delete "
                                f"{extracted}/ to read {archive} instead") from error  # fmt: skip
            yield f"{name}/{path.relative_to(extracted).as_posix()}", data
    elif archive.exists():
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [(m, zf.read(m)) for m in sorted(zf.namelist()) if m.endswith(".png")]
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:  # not a zip, truncated, bad CRC
            raise DataError(f"{archive} is not a valid zip archive ({error}); delete it and run again") from error
        yield from members
    else:
        raise DataError(f"neither {archive} nor {extracted}/ exists; put the Omniglot archives in {folder}")


def decode_omniglot(folder: Path, image_size: int = 28) -> dict:
    """Decode every drawing to `image_size`^2 uint8 with ink = 255, grouped by character id (0..1622)."""
    images, characters = [], []
    for name in ARCHIVES:
        for member, data in archive_members(folder, name):
            match = _PNG.search(member)
            if match is None:
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    grey = img.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
            except OSError as error:  # PIL's UnidentifiedImageError too
                raise DataError(
                    f"{member} in {folder} is not a readable PNG ({error}); the archive {name} is corrupt: delete "
                    "it (and its extracted folder, if any) and run again"
                ) from error
            images.append(255 - torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8))
            characters.append(int(match.group(3)) - 1)  # global character id from the file name
    if not images:
        raise DataError(f"no Omniglot drawings found under {folder}; the archives look empty or corrupt")
    char = torch.tensor(characters)
    order = torch.argsort(char, stable=True)
    return {
        "images": torch.stack(images)[order].view(-1, image_size, image_size),
        "character": char[order],
        "image_size": image_size,
    }


def load_omniglot(folder: Path, image_size: int = 28, download: bool = True) -> dict:
    """The decoded dataset, from `omniglot_<size>.pt` beside the archives when present (decoding takes ~1 min)."""
    have = all((folder / f"{n}.zip").exists() or (folder / n).is_dir() for n in ARCHIVES)

    def build() -> dict:
        if not have:
            if not download:
                raise DataError(
                    f"Omniglot archives not found in {folder}; put images_background.zip and images_evaluation.zip "
                    "there or allow the download"
                )
            download_omniglot(folder)
        return decode_omniglot(folder, image_size)

    sources = [p for n in ARCHIVES for p in ([folder / f"{n}.zip"] if (folder / f"{n}.zip").exists() else [])]
    sources += [p for n in ARCHIVES if (folder / n).is_dir() for p in (folder / n).rglob("*.png")]
    return cached(folder / f"omniglot_{image_size}.pt", build, sources)


class OmniglotDataModule(EpisodicDataModule):
    """Omniglot N-way K-shot classification with the Reptile paper's split.

    All 1623 characters are shuffled with `split_seed`; the first `train_characters` are meta-training (minus
    `val_characters` carved off for validation), the rest meta-test. Training characters are augmented with 90/180/270
    degree rotations as new classes.

    Args:
        root: folder whose `omniglot/` subfolder holds (or receives) the archives and the decoded cache.
        image_size: side of the decoded images.
        train_characters: characters for meta-training plus validation (1200 in the Reptile and MAML papers).
        val_characters: characters carved from the training ones for validation (0 allowed).
        rotations: add 90/180/270-degree rotations of each training character as new classes.
        split_seed: seed of the character shuffle (fixed, independent of the run's seed).
        download: fetch the archives when they are missing.
        **kwargs: the episode shape and sizes, see `EpisodicDataModule`.
    """

    def __init__(
        self,
        root: str = "data",
        *,
        image_size: int = 28,
        train_characters: int = 1200,
        val_characters: int = 100,
        rotations: bool = True,
        split_seed: int = 0,
        download: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= val_characters < train_characters < 1623:
            raise ConfigError(
                f"need 0 <= data.val_characters ({val_characters}) < data.train_characters ({train_characters}) "
                "< 1623 Omniglot characters"
            )
        if val_characters == 0:
            self.val_episodes = 0  # no validation split: no validation runs (and checkpoints monitor nothing)
        self.folder = Path(root) / "omniglot"
        self.image_size, self.download = image_size, download
        self.train_characters, self.val_characters = train_characters, val_characters
        self.rotations, self.split_seed = rotations, split_seed

    def input_shape(self) -> tuple[int, ...]:
        return (1, self.image_size, self.image_size)

    def prepare_data(self) -> None:
        load_omniglot(self.folder, self.image_size, self.download)

    def character_split(self, num_characters: int = 1623) -> dict[str, torch.Tensor]:
        """Character ids of each split; disjoint, test characters never in train or val."""
        order = torch.randperm(num_characters, generator=torch.Generator().manual_seed(self.split_seed))
        n_val = self.val_characters
        return {
            "train": order[n_val : self.train_characters],
            "val": order[:n_val],
            "test": order[self.train_characters :],
        }

    def build_sources(self) -> dict[str, TaskSource]:
        data = load_omniglot(self.folder, self.image_size, self.download)
        self.cache_paths = [self.folder / f"omniglot_{self.image_size}.pt"]
        character = data["character"]
        num_characters = int(character.max()) + 1
        if num_characters != 1623:
            raise DataError(
                f"{self.folder} holds {num_characters} Omniglot characters, expected 1623; check the archives"
            )
        by_char = torch.argsort(character, stable=True).view(num_characters, -1)  # (1623, 20) example ids
        sources: dict[str, TaskSource] = {}
        for split, chars in self.character_split(num_characters).items():
            if len(chars) == 0:
                continue
            examples = by_char[chars]
            rotation = None
            if split == "train" and self.rotations:
                examples = examples.repeat_interleave(4, dim=0)  # class 4c+k = character c turned k quarters
                rotation = torch.arange(4).repeat(len(chars))
            sources[split] = ClassificationTasks(data["images"], list(examples), self.ways, rotation, split=split)
        return sources
