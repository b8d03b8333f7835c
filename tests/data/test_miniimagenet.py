"""Mini-ImageNet from each on-disk layout: class counts, disjoint splits, shapes, normalisation, caching, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_meta.data.cache as cache_module
import lightning_meta.data.miniimagenet as mini
from lightning_meta.config import instantiate, load_config
from lightning_meta.data import MiniImageNetDataModule, sample_episode
from lightning_meta.errors import DataError

SPLITS = ("train", "val", "test")


def make(root: Path, **kwargs) -> MiniImageNetDataModule:
    dm = MiniImageNetDataModule(**{"root": str(root), "ways": 5, "shots": 2, "queries": 3, **kwargs})
    dm.setup()
    return dm


def raw(dm: MiniImageNetDataModule, x: torch.Tensor) -> torch.Tensor:
    """Undo the per-channel normalisation, back to 0..255. Shapes: x (B, 3, S, S) -> (B, 3, S, S)."""
    mean, std = dm.normalization
    return (x * std[:, None, None] + mean[:, None, None]) * 255


@pytest.fixture
def pickles(tmp_path, formats) -> dict:
    return formats.mini_pickles(tmp_path, classes=5, per_class=20)


def test_pickles_give_disjoint_splits_of_84px_rgb(tmp_path, pickles):
    dm = make(tmp_path)
    for s, split in enumerate(SPLITS):
        source = dm.sources[split]
        assert source.num_classes == 5 and source.num_examples == 100 and source.images.dtype == torch.uint8
        assert source.images.shape == (100, 3, 84, 84)
        ep = sample_episode(source, 0, split, 3, shots=2, queries=3)
        assert ep.support_x.shape == (10, 3, 84, 84) and ep.query_x.shape == (15, 3, 84, 84)
        assert ep.support_x.dtype == torch.float32
        tags = raw(dm, torch.cat([ep.support_x, ep.query_x]))[:, :, 0, 0].round().long()  # (split, class, index)
        assert bool((tags[:, 0] == s).all()), "an image from another split"
        labels = torch.cat([ep.support_y, ep.query_y])
        for label in range(5):  # one class per label, 5 distinct examples of it
            assert tags[labels == label, 1].unique().numel() == 1
            assert tags[labels == label, 2].unique().numel() == 5
    assert dm.input_shape() == (3, 84, 84)
    assert sorted(p.name for p in dm.cache_paths) == [f"miniimagenet_{s}_84px.pt" for s in ("test", "train", "val")]


def test_class_dict_rows_map_to_their_class(tmp_path, pickles):
    source = make(tmp_path).sources["val"]
    class_dict = pickles["val"]["class_dict"]
    for c, name in enumerate(sorted(class_dict)):  # classes in sorted name order
        image_data = pickles["val"]["image_data"][class_dict[name]]  # (20, 84, 84, 3)
        expected = torch.from_numpy(image_data).permute(0, 3, 1, 2)
        got = source.images[source.class_examples[c]]
        order = torch.argsort(got[:, 2, 0, 0].long())  # both sorted by the index tag
        assert torch.equal(got[order], expected[torch.argsort(expected[:, 2, 0, 0].long())])


def test_normalisation_uses_the_training_split_statistics(tmp_path, pickles):
    dm = make(tmp_path)
    train = pickles["train"]["image_data"].astype(np.float64) / 255  # (N, S, S, 3)
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
    assert torch.allclose(dm.normalization[0], torch.tensor(mean, dtype=torch.float32), atol=1e-6)
    assert torch.allclose(dm.normalization[1], torch.tensor(std, dtype=torch.float32), atol=1e-6)
    ep = sample_episode(dm.sources["val"], 0, "val", 0, shots=2, queries=3)  # val images, train statistics
    mean32, std32 = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (mean, std))
    normalised = (dm.sources["val"].images.float() / 255 - mean32) / std32
    assert sum(torch.allclose(ep.support_x[0], e, atol=1e-5) for e in normalised) == 1
    plain = make(tmp_path, normalize=False)
    x = sample_episode(plain.sources["train"], 0, "train", 0, 2, 3).support_x
    assert plain.normalization is None and float(x.min()) >= 0 and float(x.max()) <= 1


def test_cache_is_reused_then_rebuilt_when_a_pickle_changes(tmp_path, pickles, formats, monkeypatch):
    first = make(tmp_path)
    cache = tmp_path / "miniimagenet_train_84px.pt"
    stamp = cache.stat().st_mtime_ns
    monkeypatch.setattr(mini, "read_pickle", lambda *a: pytest.fail("decoded again"))
    again = make(tmp_path)
    assert torch.equal(again.sources["train"].images, first.sources["train"].images)
    assert cache.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    formats.mini_pickles(tmp_path, classes=6, per_class=20)  # the user fixes the data: one more class
    os.utime(tmp_path / "mini-imagenet-cache-train.pkl", ns=(stamp + 10**9, stamp + 10**9))
    assert make(tmp_path).sources["train"].num_classes == 6


def test_large_caches_are_memory_mapped(tmp_path, pickles, monkeypatch):
    make(tmp_path)  # writes the caches
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("mmap")) or real_load(*a, **k))
    monkeypatch.setattr(cache_module, "MMAP_BYTES", 0)
    make(tmp_path)
    assert calls == [True, True, True]


def test_csv_layout_resizes_and_labels_by_the_csv(tmp_path, formats):
    formats.mini_csv(tmp_path, classes=2, per_class=3)
    dm = make(tmp_path, ways=2, shots=1, queries=2, normalize=False)
    for s, split in enumerate(SPLITS):
        source = dm.sources[split]
        assert source.images.shape == (6, 3, 84, 84) and source.num_classes == 2
        ep = sample_episode(source, 0, split, 0, shots=1, queries=2)
        colour = torch.cat([ep.support_x, ep.query_x])[:, :, 42, 42] * 255  # (6, 3), flat colours
        assert torch.allclose(colour[:, 0], torch.full((6,), 80.0 * s), atol=3)  # JPEGs are off by a little
        labels = torch.cat([ep.support_y, ep.query_y])
        for label in range(2):
            assert (colour[labels == label, 1] / 60).round().unique().numel() == 1  # one class per label
    assert (tmp_path / "miniimagenet_test_84px.pt").exists()


def test_folder_layout_is_read_too(tmp_path, formats):
    for split in SPLITS:
        formats.class_folders(tmp_path / split, {f"n{split}{c}": 4 for c in range(2)}, size=30)
    dm = make(tmp_path, ways=2, shots=1, queries=1)
    assert [dm.sources[s].num_classes for s in SPLITS] == [2, 2, 2]
    assert dm.sources["train"].images.shape == (8, 3, 84, 84)


@pytest.mark.parametrize(
    "present, missing",
    [
        (["mini-imagenet-cache-train.pkl"], "mini-imagenet-cache-val.pkl, mini-imagenet-cache-test.pkl (pickle"),
        (["mini-imagenet-cache-train.pkl", "mini-imagenet-cache-test.pkl"], "lacks mini-imagenet-cache-val.pkl (p"),
        (["train.csv", "val.csv", "test.csv"], "lacks images/ (csv layout)"),
        (["train.csv", "images/"], "lacks val.csv, test.csv (csv layout)"),
        (["train/a/", "test/a/"], "lacks val/<class>/ (folder layout)"),
    ],
)
def test_missing_files_are_named(tmp_path, present, missing):
    for name in present:
        if name.endswith("/"):
            (tmp_path / name).mkdir(parents=True)
            if name.count("/") == 2:
                (tmp_path / name / "0.png").write_bytes(b"")
        else:
            (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError) as error:
        MiniImageNetDataModule(root=str(tmp_path)).setup()
    message = str(error.value)
    assert missing in message and "\n" not in message
    assert "None can be downloaded without an account" in message


def test_empty_root_lists_the_accepted_layouts(tmp_path):
    with pytest.raises(DataError) as error:
        MiniImageNetDataModule(root=str(tmp_path / "none")).prepare_data()
    message = str(error.value)
    assert message.startswith(f"no Mini-ImageNet found at data.root={tmp_path / 'none'}; put one of these")
    for name in ("mini-imagenet-cache-train.pkl", "train.csv, val.csv, test.csv", "images/<filename>",
                 "train/<class>/*.jpg"):  # fmt: skip
        assert name in message


def test_bad_pickles_and_csvs_name_the_file(tmp_path, formats):
    formats.mini_pickles(tmp_path, classes=5, per_class=6)
    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"mini-imagenet-cache-val\.pkl is not a readable pickle"):
        make(tmp_path)
    csv_root = tmp_path / "csv"
    formats.mini_csv(csv_root)
    (csv_root / "images" / "n000000.png").unlink()
    with pytest.raises(DataError, match=r"train\.csv lists n000000\.png, which is not in .*images"):
        make(csv_root, ways=2, shots=1, queries=1)


def test_data_member_selects_the_84px_conv4_with_32_filters(tmp_path):
    cfg = load_config(["data=miniimagenet", f"data.root={tmp_path}"])
    assert cfg.selection.model == "conv4_rgb" and cfg.model.hidden == 32 and cfg.model.max_pool is True
    assert cfg.data.normalize is True and cfg.data.image_size == 84
    assert instantiate(cfg.model)(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
