"""Decoded datasets cached beside their sources: fingerprinted, rebuilt when stale or corrupt, mmapped if large."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

# Caches larger than this are memory-mapped instead of read into memory (Mini-ImageNet's train split: ~0.8 GB).
MMAP_BYTES = 256 * 2**20


def fingerprint(sources: Iterable[Path], base: Path) -> str:
    """A digest of each source file's path relative to `base`, size and modification time: it changes when a file
    is added, removed, replaced or edited (not when the whole folder moves), and costs one `stat` per file."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(p) for p in sources):
        stat = path.stat()
        digest.update(f"{os.path.relpath(path, base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load(path: Path, expected: str) -> dict | None:
    """The cached data, or None when the cache is stale (warned if unreadable)."""
    try:
        entry = torch.load(path, weights_only=True, mmap=path.stat().st_size > MMAP_BYTES)
    except Exception as error:  # a truncated or foreign file: any reader error means "decode again"
        warnings.warn(
            f"the decoded cache {path} is unreadable ({type(error).__name__}: {str(error)[:200]}); decoding the "
            "data again and replacing it",
            stacklevel=3,
        )
        return None
    if not isinstance(entry, dict) or entry.get("fingerprint") != expected or "data" not in entry:
        return None  # written from other files (or by an older version): rebuild silently
    return entry["data"]


def cached(path: Path, build: Callable[[], dict], sources: Iterable[Path] = ()) -> dict:
    """`build()` once, saved to `path` with the fingerprint of `sources`, loaded from there while the sources are
    unchanged. A stale or corrupt cache is rebuilt; a folder that cannot be written (a read-only data mount) only
    costs decoding again on the next start, with a warning."""
    path = Path(path)
    expected = fingerprint(sources, path.parent)
    if path.exists():
        data = _load(path, expected)
        if data is not None:
            return data
    data = build()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch.save({"fingerprint": expected, "data": data}, partial)
        partial.replace(path)  # atomic: a concurrent reader never sees half a cache
    except (OSError, RuntimeError) as error:  # torch 2.13 raises RuntimeError for an unwritable folder
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the decoded cache {path} ({str(error)[:200]}); it will be decoded again on the next "
            "start. Copy the data into a writable data.root to keep the cache",
            stacklevel=2,
        )
    return data
