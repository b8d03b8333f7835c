"""Folder-per-class datasets: decoding, caching, and tasks drawn from the right classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_meta.config import instantiate, load_config
from lightning_meta.data import FolderDataModule
from lightning_meta.data.episode import sample_episode


def make_dataset(root: Path, classes: dict[str, int], size: int = 10) -> None:
    """Each image is a flat colour encoding (split, class, index) so tests can read ids back from pixels."""
    for s, split in enumerate(("train", "val", "test")):
        for c, (name, count) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (size, size), (s * 80, c * 20, i * 10)).save(folder / f"{i}.png")


def test_folder_tasks_come_from_one_split_and_right_classes(tmp_path: Path) -> None:
    make_dataset(tmp_path, {f"class{c}": 6 for c in range(4)})
    dm = FolderDataModule(root=str(tmp_path), ways=3, shots=2, queries=2, image_size=8, meta_batch_size=2)
    dm.setup()
    ep = sample_episode(dm.sources["test"], 0, "test", 5, shots=2, queries=2)
    assert ep.support_x.shape == (6, 3, 8, 8) and ep.query_x.shape == (6, 3, 8, 8)
    pixels = torch.cat([ep.support_x, ep.query_x])[:, :, 0, 0] * 255  # (12, 3): (split, class, index) colours
    assert torch.allclose(pixels[:, 0], torch.full((12,), 160.0), atol=1)  # all from the test split
    labels = torch.cat([ep.support_y, ep.query_y])
    for label in range(3):  # one class per label, examples distinct
        cls = pixels[labels == label, 1].round().unique()
        assert cls.numel() == 1
        assert pixels[labels == label, 2].round().unique().numel() == 4
    assert (tmp_path / "test_8px_3c.pt").exists()


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(tmp_path, {"a": 3, "b": 3})
    first = FolderDataModule(root=str(tmp_path), ways=2, shots=1, queries=1, image_size=8)
    first.setup()
    monkeypatch.setattr("lightning_meta.data.folder.decode_folder", lambda *a: pytest.fail("decoded again"))
    second = FolderDataModule(root=str(tmp_path), ways=2, shots=1, queries=1, image_size=8)
    second.setup()
    assert torch.equal(first.sources["train"].images, second.sources["train"].images)


def test_missing_root_names_the_layout(tmp_path: Path) -> None:
    dm = FolderDataModule(root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"Put one folder per class under .*nope/train"):
        dm.setup()


def test_miniimagenet_config_selects_the_rgb_network(tmp_path: Path) -> None:
    cfg = load_config(["data=miniimagenet", f"data.root={tmp_path}"])
    model = instantiate(cfg.model)
    assert model(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    assert cfg.selection.model == "conv4_rgb"


def test_unwritable_cache_warns_and_still_returns_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_meta.data.episode import cached

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(torch, "save", refuse)
    with pytest.warns(UserWarning, match=r"could not write the decoded cache .*writable data.root"):
        data = cached(tmp_path / "c.pt", lambda: {"x": torch.arange(3)})
    assert torch.equal(data["x"], torch.arange(3)) and not (tmp_path / "c.pt").exists()


def test_taskset_with_raw_class_ids_gets_labels_0_to_n() -> None:
    from lightning_meta.data.episode import TaskSetTasks

    class RawIds:  # a learn2learn-style taskset that keeps the dataset's class ids (17 and 42)
        def sample(self):
            y = torch.tensor([42, 17, 42, 17, 42, 17])
            return y.float()[:, None], y

    ep = TaskSetTasks(RawIds()).sample_task(torch.Generator().manual_seed(0), shots=2, queries=1)
    assert sorted(ep.support_y.tolist()) == [0, 0, 1, 1] and sorted(ep.query_y.tolist()) == [0, 1]
    assert torch.equal(ep.support_x[:, 0] == 42, ep.support_y == 1)  # 17 -> 0, 42 -> 1
