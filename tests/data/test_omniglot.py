"""Omniglot from the real archives: sizes, the character split, rotations, the cache, the loader's errors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_meta.data import OmniglotDataModule, sample_episode
from lightning_meta.data import omniglot as omniglot_module
from lightning_meta.data.omniglot import archive_members, decode_omniglot, load_omniglot
from lightning_meta.errors import DataError


@pytest.fixture(scope="module")
def data(omniglot_root: Path) -> dict:
    return load_omniglot(omniglot_root / "omniglot", download=False)


@pytest.fixture(scope="module")
def datamodule(omniglot_root: Path) -> OmniglotDataModule:
    dm = OmniglotDataModule(root=str(omniglot_root), ways=5, val_characters=100, download=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.flatten(1)}


def test_decoded_dataset(data):
    assert data["images"].shape == (1623 * 20, 28, 28) and data["images"].dtype == torch.uint8
    assert torch.equal(torch.bincount(data["character"]), torch.full((1623,), 20))
    assert torch.equal(data["character"], torch.arange(1623).repeat_interleave(20))
    ink = data["images"].float().mean() / 255
    assert 0.02 < ink < 0.3, "strokes are ink=255 on a 0 background"
    assert data["images"][:, 0, :].float().mean() < 2.0  # the border is background


def test_decoding_matches_an_independent_read(omniglot_root, data):
    """Drawing 0709_03 (character 708) decoded by hand: grey, LANCZOS to 28x28, inverted."""
    with zipfile.ZipFile(omniglot_root / "omniglot" / "images_background.zip") as zf:
        png = zf.read(next(n for n in zf.namelist() if n.endswith("/0709_03.png")))
    with Image.open(io.BytesIO(png)) as img:
        grey = img.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    expected = 255 - torch.tensor(list(grey.getdata()), dtype=torch.uint8).view(28, 28)
    assert torch.equal(data["images"][708 * 20 + 2], expected)


def test_background_and_evaluation_character_ids(omniglot_root):
    ids = {}
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot_root / "omniglot" / f"{name}.zip") as zf:
            ids[name] = {int(Path(n).name[:4]) - 1 for n in zf.namelist() if n.endswith(".png")}
    assert ids["images_background"] == set(range(964))
    assert ids["images_evaluation"] == set(range(964, 1623))


def test_split_sizes(datamodule):
    split = datamodule.character_split()
    assert {k: len(v) for k, v in split.items()} == {"train": 1100, "val": 100, "test": 423}
    assert torch.equal(torch.cat(list(split.values())).sort().values, torch.arange(1623))
    sources = datamodule.sources
    assert (sources["train"].num_classes, sources["val"].num_classes, sources["test"].num_classes) == (
        4400,
        100,
        423,
    )
    assert sources["val"].class_rotation is None and sources["test"].class_rotation is None


def test_split_without_validation_or_rotations(omniglot_root):
    dm = OmniglotDataModule(root=str(omniglot_root), val_characters=0, rotations=False, download=False)
    dm.setup("fit")
    assert set(dm.sources) == {"train", "test"} and dm.sources["train"].num_classes == 1200
    assert dm.val_dataloader() == [] and dm.val_episodes == 0  # so train() monitors no val metric


def test_split_is_fixed_by_split_seed(datamodule, omniglot_root):
    same = OmniglotDataModule(root=str(omniglot_root), seed=5).character_split()
    other = OmniglotDataModule(root=str(omniglot_root), split_seed=1).character_split()
    assert torch.equal(same["test"], datamodule.character_split()["test"])
    assert not torch.equal(other["test"], same["test"])


def test_meta_test_characters_never_seen_in_training(datamodule, data):
    char = data["character"]
    chars = {
        split: {int(c) for ids in source.class_examples for c in char[ids]}
        for split, source in datamodule.sources.items()
    }  # fmt: skip
    assert len(chars["test"]) == 423 and len(chars["train"]) == 1100 and len(chars["val"]) == 100
    assert not chars["test"] & (chars["train"] | chars["val"]) and not chars["train"] & chars["val"]
    assert chars["test"] == set(datamodule.character_split()["test"].tolist())
    train_ids = torch.cat(datamodule.sources["train"].class_examples).unique()
    test_ids = torch.cat(datamodule.sources["test"].class_examples).unique()
    train = data["images"][train_ids]
    seen = set().union(*(_rows(torch.rot90(train, k, dims=(-2, -1))) for k in range(4)))
    assert not _rows(data["images"][test_ids]) & seen, "a meta-test image equals a (rotated) training image"


def test_rotation_classes_are_rotated_base_characters(datamodule, data):
    source = datamodule.sources["train"]
    assert torch.equal(source.class_rotation[:8], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    for c in (0, 1, 2, 3, 4396):
        assert torch.equal(source.class_examples[c], source.class_examples[c - c % 4])
    # Every sampled image is some training drawing turned by some quarter; one label = one (character, turn).
    lookup: dict[bytes, set] = {}
    train_ids = torch.cat(source.class_examples[::4])
    for k in range(4):
        turned = torch.rot90(data["images"][train_ids], k, dims=(-2, -1))
        for row, c in zip(turned.flatten(1), data["character"][train_ids].tolist(), strict=True):
            lookup.setdefault(row.numpy().tobytes(), set()).add((c, k))
    turns = set()
    for index in range(10):
        ep = sample_episode(source, 0, "train", index, 3, 2)
        x = torch.cat([ep.support_x, ep.query_x]).mul(255).round().to(torch.uint8).flatten(1)
        y = torch.cat([ep.support_y, ep.query_y])
        keys = [set.intersection(*(lookup[row.numpy().tobytes()] for row in x[y == label])) for label in range(5)]
        assert all(len(k) >= 1 for k in keys), "examples of one label are not one turned character"
        turns.update(k for key in keys for _, k in key)
    assert turns == {0, 1, 2, 3}


def _write_tiny_omniglot(folder: Path, as_zip: bool = True) -> None:
    """Two archives with 2 characters x 2 drawers each; character c has a c-pixel-wide black bar."""
    folder.mkdir(parents=True, exist_ok=True)
    for a, name in enumerate(("images_background", "images_evaluation")):
        files = {}
        for c in range(2):
            char = 2 * a + c + 1
            for drawer in (1, 2):
                img = Image.new("L", (105, 105), 255)
                img.paste(0, (0, 0, 10 * char, 105))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                files[f"{name}/Alpha/character0{c + 1}/{char:04d}_{drawer:02d}.png"] = buf.getvalue()
        if as_zip:
            with zipfile.ZipFile(folder / f"{name}.zip", "w") as zf:
                for path, png in files.items():
                    zf.writestr(path, png)
        else:
            for path, png in files.items():
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).write_bytes(png)


def test_tiny_archives_decode_then_cache(tmp_path, monkeypatch):
    _write_tiny_omniglot(tmp_path)
    data = load_omniglot(tmp_path, image_size=14, download=False)
    cache = tmp_path / "omniglot_14.pt"
    assert cache.exists() and sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []
    assert data["images"].shape == (8, 14, 14)
    assert torch.equal(data["character"], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    bar_width = (data["images"][:, 7] > 128).sum(-1)  # ink columns on the middle row: 14 * 10c / 105
    assert bar_width.tolist() == [1, 1, 3, 3, 4, 4, 5, 5]
    stamp = cache.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot_module, "decode_omniglot", fail)
    again = load_omniglot(tmp_path, image_size=14, download=False)
    assert torch.equal(again["images"], data["images"]) and cache.stat().st_mtime_ns == stamp


def test_real_cache_is_reused(omniglot_root, data, monkeypatch):
    cache = omniglot_root / "omniglot" / "omniglot_28.pt"
    stamp = cache.stat().st_mtime_ns
    monkeypatch.setattr(omniglot_module, "decode_omniglot", lambda *a, **k: pytest.fail("decoded again"))
    again = load_omniglot(omniglot_root / "omniglot", download=False)
    assert torch.equal(again["images"], data["images"]) and cache.stat().st_mtime_ns == stamp


def test_extracted_folders_read_like_the_archives(tmp_path):
    _write_tiny_omniglot(tmp_path / "zipped")
    _write_tiny_omniglot(tmp_path / "extracted", as_zip=False)
    for name in ("images_background", "images_evaluation"):
        zipped = list(archive_members(tmp_path / "zipped", name))
        extracted = list(archive_members(tmp_path / "extracted", name))
        assert len(zipped) == 4 and zipped == extracted
    a, b = decode_omniglot(tmp_path / "zipped", 14), decode_omniglot(tmp_path / "extracted", 14)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["character"], b["character"])


def test_corrupt_archive_names_the_fix(tmp_path):
    for name in ("images_background", "images_evaluation"):
        (tmp_path / f"{name}.zip").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"images_background\.zip is not a valid zip archive .* delete it and run"):
        load_omniglot(tmp_path, download=False)
    assert not (tmp_path / "omniglot_28.pt").exists()


def test_missing_archives_without_download(tmp_path):
    dm = OmniglotDataModule(root=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"put images_background\.zip and images_evaluation\.zip there"):
        dm.prepare_data()
    assert not (tmp_path / "omniglot").exists() or not any((tmp_path / "omniglot").iterdir())


def test_bad_character_counts_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"data\.val_characters \(1200\) < data\.train_characters \(1200\)"):
        OmniglotDataModule(root=str(tmp_path), val_characters=1200)
