"""Any learn2learn-style taskset from the config: `data=taskset data.factory=package.module:function`."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.episode import TaskSetTasks, TaskSource
from lightning_meta.errors import ConfigError, DataError

# Split names a factory may use, mapped to ours (learn2learn's BenchmarkTasksets says "validation").
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def import_factory(spec: str) -> Callable:
    """`package.module:function` -> the function; a module in the current directory is found too."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"data.factory={spec!r}; write it as package.module:function")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"data.factory={spec} cannot be imported ({error}); check the module path") from error
    if not callable(factory):
        raise ConfigError(f"data.factory={spec} is a {type(factory).__name__}, not a callable")
    return factory


def check_factory_args(factory: Callable, spec: str, args: dict[str, Any]) -> None:
    """`args` bind to the factory's signature (a factory without one, e.g. a builtin, is not checked)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**args)
    except TypeError as error:
        raise ConfigError(f"data.factory_args={args} do not fit {spec}{signature} ({error}); set its arguments as "
                          "data.factory_args.<name>=value") from error  # fmt: skip


def split_tasksets(result: Any, spec: str) -> dict[str, Any]:
    """The factory's tasksets by split: a mapping, an object with train/validation/test attributes (learn2learn's
    `BenchmarkTasksets`), or a (train, val, test) sequence."""
    if isinstance(result, Mapping):
        found = {SPLIT_NAMES[k]: v for k, v in result.items() if k in SPLIT_NAMES and v is not None}
    elif isinstance(result, (tuple, list)) and not hasattr(result, "_fields") and len(result) == 3:
        found = dict(zip(("train", "val", "test"), result, strict=True))
    else:
        found = {ours: getattr(result, name) for name, ours in SPLIT_NAMES.items() if getattr(result, name, None)}
    if "train" not in found or "test" not in found:
        raise DataError(
            f"data.factory={spec} returned {type(result).__name__} without train and test tasksets; return "
            "{'train': ..., 'val': ..., 'test': ...} (val optional), each with .sample() -> (x, y)"
        )
    return found


class TaskSetDataModule(EpisodicDataModule):
    """Episodes from learn2learn-style tasksets (`taskset.sample() -> (x, y)`) that a factory builds per split.

    The factory is called once with `factory_args`; each task's classes are relabelled 0..N-1 and split into
    `shots` support and `queries` query examples per class (see `TaskSetTasks`). The network's input shape is read
    from a sampled task, so no image-size key has to be kept in step with the taskset.

    Args:
        factory: `package.module:function` returning the tasksets (a dict train/val/test, learn2learn's
            `BenchmarkTasksets`, or a 3-tuple); val may be missing (no validation then).
        factory_args: keyword arguments of the factory.
        **kwargs: the episode shape and sizes, see `EpisodicDataModule`; `ways` must match the tasksets' tasks.
    """

    def __init__(self, factory: str = "", *, factory_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factory, self.factory_args = factory, dict(factory_args or {})

    def build_sources(self) -> dict[str, TaskSource]:
        if not self.factory:
            raise ConfigError("data=taskset needs data.factory=package.module:function returning the tasksets")
        factory = import_factory(self.factory)
        check_factory_args(factory, self.factory, self.factory_args)
        result = factory(**self.factory_args)
        sources = {split: TaskSetTasks(taskset, f"data.factory={self.factory}, split {split}")
                   for split, taskset in split_tasksets(result, self.factory).items()}  # fmt: skip
        for split, source in sources.items():
            _, y = source.draw(torch.Generator().manual_seed(0))
            if int(y.max()) + 1 != self.ways:
                raise DataError(
                    f"data.ways={self.ways} but the {split} taskset's tasks have {int(y.max()) + 1} classes; "
                    f"set data.ways={int(y.max()) + 1} or build {self.ways}-way tasksets"
                )
        if "val" not in sources:
            self.val_episodes = 0
        return sources
