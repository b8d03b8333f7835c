"""CIFAR-FS and FC100 from a miniature `cifar-100-python.tar.gz`: published splits, shapes, archive errors."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error

import pytest
import torch

import lightning_meta.data.cifar as cifar
from lightning_meta.config import load_config
from lightning_meta.data import CIFARFSDataModule, FC100DataModule, sample_episode
from lightning_meta.data.splits import CIFAR_FS, FC100
from lightning_meta.errors import DataError

SPLITS = ("train", "val", "test")


def make(cls, root, **kwargs):
    dm = cls(**{"root": str(root), "ways": 5, "shots": 1, "queries": 2, "download": False, **kwargs})
    dm.setup()
    return dm


def fine_ids(source) -> list[int]:
    """The fine label of each class of a source, read from its images' red plane."""
    return [int(source.images[ids[0], 0, 0, 0]) for ids in source.class_examples]


def test_published_class_lists_partition_cifar100(formats):
    names = {n for fine in formats.taxonomy.values() for n in fine}
    assert [len(CIFAR_FS[s]) for s in SPLITS] == [64, 16, 20]
    assert set().union(*(set(CIFAR_FS[s]) for s in SPLITS)) == names and len(names) == 100
    assert [len(FC100[s]) for s in SPLITS] == [12, 4, 4]
    assert set().union(*(set(FC100[s]) for s in SPLITS)) == set(formats.taxonomy)


def test_cifar_fs_splits_classes_by_the_published_lists(tmp_path, formats):
    formats.cifar100(tmp_path)
    dm = make(CIFARFSDataModule, tmp_path)
    names = sorted(n for fine in formats.taxonomy.values() for n in fine)  # fine_label_names order
    for split in SPLITS:
        source = dm.sources[split]
        assert sorted(names[f] for f in fine_ids(source)) == sorted(CIFAR_FS[split])
        assert source.num_examples == 6 * len(CIFAR_FS[split])  # 4 from the train file + 2 from the test file
        for ids in source.class_examples:  # each class holds exactly its own images
            assert source.images[ids, 0].unique().numel() == 1
            assert sorted(source.images[ids, 2, 0, 0].tolist()) == [0, 0, 0, 0, 1, 1]
    assert dm.input_shape() == (3, 32, 32) and dm.sources["train"].images.shape == (600, 3, 32, 32)
    ep = sample_episode(dm.sources["test"], 0, "test", 0, shots=1, queries=2)
    assert ep.support_x.shape == (5, 3, 32, 32) and ep.query_x.shape == (10, 3, 32, 32)
    assert dm.cache_paths == [tmp_path / "cifar100_32px.pt"] and dm.cache_paths[0].exists()


def test_fc100_splits_by_superclass(tmp_path, formats):
    formats.cifar100(tmp_path)
    dm = make(FC100DataModule, tmp_path)
    names = sorted(n for fine in formats.taxonomy.values() for n in fine)
    superclass_of = {n: s for s, fine in formats.taxonomy.items() for n in fine}
    seen = set()
    for split in SPLITS:
        superclasses = {superclass_of[names[f]] for f in fine_ids(dm.sources[split])}
        assert superclasses == set(FC100[split]) and not superclasses & seen
        assert dm.sources[split].num_classes == 5 * len(FC100[split])  # 60 / 20 / 20
        seen |= superclasses


def test_normalisation_uses_the_training_classes(tmp_path, formats):
    formats.cifar100(tmp_path)
    dm = make(CIFARFSDataModule, tmp_path)
    train = dm.sources["train"]
    pixels = torch.cat([train.images[ids] for ids in train.class_examples]).double() / 255
    assert torch.allclose(dm.normalization[0].double(), pixels.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(dm.normalization[1].double(), pixels.std(dim=(0, 2, 3), unbiased=False), atol=1e-6)
    ep = sample_episode(train, 0, "train", 0, shots=1, queries=2)
    mean, std = dm.normalization
    red = ep.support_x[:, 0, 0, 0] * std[0] + mean[0]
    assert torch.allclose(red * 255, (red * 255).round(), atol=1e-3)  # exact class ids come back


def test_extracted_archive_reads_the_same(tmp_path, formats):
    archive = formats.cifar100(tmp_path / "zipped")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    a = make(CIFARFSDataModule, tmp_path / "zipped").sources["val"]
    b = make(CIFARFSDataModule, tmp_path / "extracted").sources["val"]
    assert torch.equal(a.images, b.images) and all(map(torch.equal, a.class_examples, b.class_examples))


def test_missing_archive_without_download(tmp_path):
    with pytest.raises(DataError) as error:
        make(CIFARFSDataModule, tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'cifar-100-python.tar.gz'} does not exist; copy cifar-100-python.tar.gz "
        "(md5 eb9058c3a382ffc7106e4002c42a8d85) there or set data.download=true"
    )


def test_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        make(FC100DataModule, tmp_path, download=True)
    message = str(error.value)
    assert message.startswith(f"could not download {cifar.URL} (<urlopen error [Errno -3] Temporary failure")
    assert message.endswith(f"copy cifar-100-python.tar.gz (md5 {cifar.MD5}) into {tmp_path} by hand, or set "
                            "data.root to a folder that has it")  # fmt: skip
    assert "\n" not in message and list(tmp_path.iterdir()) == []


def test_download_is_checked_against_the_md5(tmp_path, formats, monkeypatch):
    content = formats.cifar100(tmp_path / "server").read_bytes()
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(content))
    with pytest.raises(DataError, match=r"has md5 [0-9a-f]{32}, not eb9058c3a382ffc7106e4002c42a8d85; run again"):
        make(CIFARFSDataModule, tmp_path / "a", download=True)
    assert not (tmp_path / "a" / "cifar-100-python.tar.gz").exists()
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(content).hexdigest())  # the fake server's archive is "right"
    dm = make(CIFARFSDataModule, tmp_path / "b", download=True)
    assert (tmp_path / "b" / "cifar-100-python.tar.gz").read_bytes() == content
    assert dm.sources["test"].num_classes == 20


def test_corrupt_or_foreign_archive_names_the_fix(tmp_path):
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz is not a readable CIFAR-100 python archive"):
        make(CIFARFSDataModule, tmp_path)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:  # right format, no meta member
        info = tarfile.TarInfo("cifar-100-python/train")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match=r"it must hold cifar-100-python/train, test and meta .*: delete it"):
        make(CIFARFSDataModule, tmp_path)


def test_data_members_compose(tmp_path):
    for name, target in [("cifar_fs", "CIFARFSDataModule"), ("fc100", "FC100DataModule")]:
        cfg = load_config([f"data={name}", f"data.root={tmp_path}"])
        assert cfg.data._target_ == f"lightning_meta.data.{target}" and cfg.selection.model == "conv4_rgb"


def test_setup_logs_one_line_with_classes_examples_shape_and_cache(tmp_path, formats, caplog):
    formats.cifar100(tmp_path)
    with caplog.at_level("INFO"):
        dm = make(CIFARFSDataModule, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CIFARFSDataModule:")]
    assert lines == [dm.describe()] and dm.describe() == (
        "CIFARFSDataModule: train 64 classes / 384 examples; val 16 classes / 96 examples; test 20 classes / "
        f"120 examples; examples 3x32x32; cache {tmp_path / 'cifar100_32px.pt'}"
    )
