"""Folder-per-class datasets: both layouts, class splits, grey or RGB, caching, and the model following the data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import lightning_meta.data.folder as folder_module
from lightning_meta.build import build
from lightning_meta.config import ConfigError, instantiate, load_config
from lightning_meta.data import FolderDataModule, fit_model_input
from lightning_meta.data.episode import sample_episode
from lightning_meta.errors import DataError


def make_dataset(root: Path, classes: dict[str, int], size: int = 10) -> None:
    """Pre-split layout; each image is a flat colour encoding (split, class, index)."""
    for s, split in enumerate(("train", "val", "test")):
        for c, (name, count) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (size, size), (s * 80, c * 20, i * 10)).save(folder / f"{i}.png")


def make(root: Path, **kwargs) -> FolderDataModule:
    dm = FolderDataModule(**{"root": str(root), "ways": 2, "shots": 1, "queries": 1, "image_size": 8, **kwargs})
    dm.setup()
    return dm


def class_ids(source) -> set[int]:
    """Class numbers of a source built by `formats.class_folders` (red = class * 20)."""
    return {int(source.images[ids[0], 0, 0, 0]) // 20 for ids in source.class_examples}


def test_presplit_tasks_come_from_one_split_and_right_classes(tmp_path: Path) -> None:
    make_dataset(tmp_path, {f"class{c}": 6 for c in range(4)})
    dm = make(tmp_path, ways=3, shots=2, queries=2, meta_batch_size=2)
    ep = sample_episode(dm.sources["test"], 0, "test", 5, shots=2, queries=2)
    assert ep.support_x.shape == (6, 3, 8, 8) and ep.query_x.shape == (6, 3, 8, 8)
    pixels = torch.cat([ep.support_x, ep.query_x])[:, :, 0, 0] * 255  # (12, 3): (split, class, index) colours
    assert torch.allclose(pixels[:, 0], torch.full((12,), 160.0), atol=1)  # all from the test split
    labels = torch.cat([ep.support_y, ep.query_y])
    for label in range(3):  # one class per label, examples distinct
        assert pixels[labels == label, 1].round().unique().numel() == 1
        assert pixels[labels == label, 2].round().unique().numel() == 4
    assert (tmp_path / "test_8px_3c.pt").exists()


def test_unsplit_folder_is_split_by_ratio_seeded_and_disjoint(tmp_path, formats):
    formats.class_folders(tmp_path, {f"c{c:02d}": 3 for c in range(10)})
    dm = make(tmp_path, split_ratio=[0.6, 0.2, 0.2])
    parts = {split: class_ids(source) for split, source in dm.sources.items()}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert set.union(*parts.values()) == set(range(10)) and sum(map(len, parts.values())) == 10
    assert {s: class_ids(src) for s, src in make(tmp_path, split_ratio=[0.6, 0.2, 0.2]).sources.items()} == parts
    other = {s: class_ids(src) for s, src in make(tmp_path, split_ratio=[0.6, 0.2, 0.2], split_seed=1).sources.items()}
    assert other != parts
    assert dm.cache_paths == [tmp_path / "classes_8px_3c.pt"]  # one cache for every class, whatever the split


def test_unsplit_folder_is_split_by_listed_class_files(tmp_path, formats):
    formats.class_folders(tmp_path, {f"c{c}": 3 for c in range(6)})
    (tmp_path / "train.txt").write_text("c0\nc1\nc2\n")
    (tmp_path / "test.txt").write_text("c4\nc5\n\n")
    dm = make(tmp_path, split_files={"train": "train.txt", "test": str(tmp_path / "test.txt")})
    assert sorted(dm.sources) == ["test", "train"] and dm.val_dataloader() == []
    assert class_ids(dm.sources["train"]) == {0, 1, 2} and class_ids(dm.sources["test"]) == {4, 5}
    (tmp_path / "test.txt").write_text("c4\nc9\n")
    with pytest.raises(DataError, match=r"test\.txt lists 'c9', which is not a class folder of"):
        make(tmp_path, split_files={"train": "train.txt", "test": "test.txt"})
    (tmp_path / "test.txt").write_text("c2\nc5\n")
    with pytest.raises(ConfigError, match=r"data\.split_files must list train and test classes, each class in one"):
        make(tmp_path, split_files={"train": "train.txt", "test": "test.txt"})


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_grey_or_rgb_follows_the_images(tmp_path, formats, mode, channels):
    formats.class_folders(tmp_path, {f"c{c}": 3 for c in range(10)}, mode=mode)
    dm = FolderDataModule(root=str(tmp_path), image_size=8, ways=2, shots=1, queries=1)
    assert dm.input_shape() == (channels, 8, 8)
    dm.setup()
    assert dm.sources["train"].images.shape[1:] == (channels, 8, 8)
    forced = make(tmp_path, channels=3)
    assert forced.sources["train"].images.shape[1] == 3 and forced.cache_paths[0].name == "classes_8px_3c.pt"


def test_model_input_follows_the_data(tmp_path, formats):
    formats.class_folders(tmp_path, {f"c{c}": 3 for c in range(10)}, mode="L")
    cfg = load_config(["data=folder", f"data.root={tmp_path}", "data.image_size=16", "model.hidden=4"])
    datamodule, learner = build(cfg)
    conv = learner.backbone.features[0]
    assert conv.in_channels == 1 and (cfg.model.in_channels, cfg.model.image_size) == (1, 16)
    assert learner.hparams["config"]["model"]["in_channels"] == 1  # what eval.py rebuilds from
    assert learner.backbone(torch.zeros(2, 1, 16, 16)).shape == (2, 5)


def test_fit_model_input_per_backbone_kind():
    conv = load_config(["model=conv4"]).model
    fit_model_input(conv, (3, 32, 32))
    assert (conv.in_channels, conv.image_size) == (3, 32)
    mlp = load_config(["data=sinusoid"]).model
    fit_model_input(mlp, (7,))
    assert mlp.in_features == 7
    with pytest.raises(ConfigError, match=r"Conv4 takes square images \(C, S, S\) but the data's examples have shape"):
        fit_model_input(conv, (3, 32, 16))
    with pytest.raises(ConfigError, match=r"MLP takes vectors \(in_features\) but .* shape \(1, 28, 28\); choose"):
        fit_model_input(mlp, (1, 28, 28))


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(tmp_path, {"a": 3, "b": 3})
    first = make(tmp_path)
    monkeypatch.setattr(folder_module, "decode_files", lambda *a: pytest.fail("decoded again"))
    second = make(tmp_path)
    assert torch.equal(first.sources["train"].images, second.sources["train"].images)


def test_cache_is_rebuilt_when_an_image_changes(tmp_path, formats):
    """Fixing the data takes effect: the cache of the old images is not reused."""
    formats.class_folders(tmp_path, {f"c{c}": 3 for c in range(10)})
    make(tmp_path)
    image = tmp_path / "c1" / "0.png"
    stamp = image.stat().st_mtime_ns
    Image.new("RGB", (10, 10), (250, 250, 250)).save(image)
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    (tmp_path / "c1" / "3.png").write_bytes((tmp_path / "c1" / "1.png").read_bytes())  # and one more image
    images = torch.cat([s.images for s in make(tmp_path).sources.values()])
    assert bool((images[:, 0, 0, 0] == 250).any()) and make(tmp_path).sources["train"].images.shape[0] == 31


def test_missing_or_empty_root_names_the_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        make(tmp_path / "nope")
    assert str(error.value) == (
        f"no images under {tmp_path / 'nope'}: put one folder of images per class there, as <root>/<class>/<image> "
        "(split here) or <root>/{train,val,test}/<class>/<image>, or set data.root"
    )
    make_dataset(tmp_path / "presplit", {"a": 3, "b": 3})
    for split in ("val", "test"):
        for folder in (tmp_path / "presplit" / split).iterdir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    with pytest.raises(DataError, match=r"presplit/test holds no class folders; meta-testing needs a test split"):
        make(tmp_path / "presplit")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=2), r"data\.channels=2; use 1 \(grey\), 3 \(RGB\) or null"),
        (dict(split_ratio=[0.5, 0.5, 0.5]), r"data\.split_ratio=\[0\.5, 0\.5, 0\.5\]; give 3 fractions"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FolderDataModule(root=str(tmp_path), **kwargs)


def test_folder_config_composes_and_instantiates(tmp_path: Path) -> None:
    cfg = load_config(["data=folder", f"data.root={tmp_path}"])
    dm = instantiate(cfg.data)
    assert dm.channels is None and dm.split_ratio == (0.64, 0.16, 0.2) and cfg.selection.model == "conv4_rgb"


def test_taskset_with_raw_class_ids_gets_labels_0_to_n() -> None:
    from lightning_meta.data.episode import TaskSetTasks

    class RawIds:  # a learn2learn-style taskset that keeps the dataset's class ids (17 and 42)
        def sample(self):
            y = torch.tensor([42, 17, 42, 17, 42, 17])
            return y.float()[:, None], y

    ep = TaskSetTasks(RawIds()).sample_task(torch.Generator().manual_seed(0), shots=2, queries=1)
    assert sorted(ep.support_y.tolist()) == [0, 0, 1, 1] and sorted(ep.query_y.tolist()) == [0, 1]
    assert torch.equal(ep.support_x[:, 0] == 42, ep.support_y == 1)  # 17 -> 0, 42 -> 1
