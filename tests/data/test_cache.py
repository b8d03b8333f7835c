"""Decoded caches: fingerprinted by their sources, rebuilt when stale or corrupt, never fatal on a read-only folder."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lightning_meta.data.cache import cached, fingerprint


def counting_build(calls: list, value: int = 3):
    def build() -> dict:
        calls.append(1)
        return {"x": torch.arange(value)}

    return build


def test_fingerprint_follows_edits_additions_and_removals_but_not_a_move(tmp_path):
    (tmp_path / "src").mkdir()
    a, b = tmp_path / "src" / "a.png", tmp_path / "src" / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    base = fingerprint([a, b], tmp_path)
    assert fingerprint([b, a], tmp_path) == base  # order-free
    os.utime(a, ns=(1, 1))
    touched = fingerprint([a, b], tmp_path)
    assert touched != base
    assert fingerprint([a], tmp_path) != touched
    b.write_bytes(b"33")
    os.utime(b, ns=(2, 2))
    before = fingerprint([a, b], tmp_path)
    b.write_bytes(b"333")  # same mtime, other size
    os.utime(b, ns=(2, 2))
    assert fingerprint([a, b], tmp_path) != before
    shutil.copytree(tmp_path / "src", tmp_path / "moved" / "src", copy_function=shutil.copy2)
    moved = [tmp_path / "moved" / "src" / n for n in ("a.png", "b.png")]
    assert fingerprint(moved, tmp_path / "moved") == fingerprint([a, b], tmp_path)


def test_cache_is_built_once_and_rebuilt_when_a_source_changes(tmp_path):
    source, path, calls = tmp_path / "img.png", tmp_path / "c.pt", []
    source.write_bytes(b"old")
    assert torch.equal(cached(path, counting_build(calls), [source])["x"], torch.arange(3))
    assert torch.equal(cached(path, counting_build(calls), [source])["x"], torch.arange(3)) and len(calls) == 1
    source.write_bytes(b"newer")
    assert torch.equal(cached(path, counting_build(calls, 5), [source])["x"], torch.arange(5)) and len(calls) == 2
    assert torch.equal(cached(path, counting_build(calls, 7), [source])["x"], torch.arange(5)) and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "img.png"]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncate", "garbage", "old_format"])
def test_corrupt_or_old_cache_is_rebuilt(tmp_path, damage):
    path, calls = tmp_path / "c.pt", []
    cached(path, counting_build(calls), [])
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        torch.save({"x": torch.arange(9)}, path)  # a cache from before fingerprints: the data alone
    if damage == "old_format":
        data = cached(path, counting_build(calls, 4), [])  # stale, rebuilt without a word
    else:
        with pytest.warns(UserWarning, match=rf"the decoded cache {path} is unreadable .*decoding the data again"):
            data = cached(path, counting_build(calls, 4), [])
    assert torch.equal(data["x"], torch.arange(4)) and len(calls) == 2
    assert torch.equal(torch.load(path, weights_only=True)["data"]["x"], torch.arange(4))


def _warns_unwritable(path, calls):
    with pytest.warns(UserWarning, match=r"could not write the decoded cache .*c\.pt .*writable data\.root"):
        data = cached(path, counting_build(calls), [])
    assert torch.equal(data["x"], torch.arange(3)) and not path.exists()


def test_read_only_folder_warns_and_still_returns_the_data(tmp_path):
    folder = tmp_path / "mount"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: the fake below covers this case
            pytest.skip("running as root: chmod cannot make a folder read-only")
        calls = []
        _warns_unwritable(folder / "c.pt", calls)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_torch_save_runtime_error_warns(tmp_path, monkeypatch):
    """torch 2.13's `torch.save` raises RuntimeError, not OSError, for a folder it cannot write."""

    def refuse(obj, f, *args, **kwargs):
        raise RuntimeError(f"File {f} cannot be opened.")

    monkeypatch.setattr(torch, "save", refuse)
    _warns_unwritable(tmp_path / "c.pt", [])
    assert list(tmp_path.iterdir()) == []
