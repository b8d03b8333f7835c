"""OmegaConf without Hydra: group composition, CLI overrides, signature-checked nodes and `instantiate`.

CLI grammar: `[group=name ...] [dotted.key=value ...]`. `configs/train.yaml` names one member of each group under
`defaults:`; a group file (or an `experiment/` preset) may carry its own `defaults:` (e.g. `data/sinusoid.yaml`
selects `model: mlp`). Precedence, lowest first: train.yaml, the data member's defaults, the experiment's, the
command line. A node with `_target_` must bind to that callable's signature: unknown keys and wrong types are
errors that name the key, the expected type and the nearest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_meta.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("algorithm", "data", "model", "trainer", "logger", "experiment")
# Groups whose member is a `_target_` node of the composed config (a logger member may be `_target_: null`: none).
NODE_GROUPS = ("algorithm", "data", "model", "trainer", "logger")
# `_target_` nodes written in train.yaml itself (not groups); optional, so configs saved before them still load.
RUN_NODES = ("checkpoint",)
# Top-level keys and their types (they have no constructor to bind to).
RUN_KEYS: dict[str, Any] = {"seed": int, "output_dir": str | None, "ckpt_path": str | None}
# Arguments filled in by train() itself, never from the config.
PROVIDED = {
    "algorithm": ("backbone", "task"),
    "trainer": ("callbacks", "logger", "default_root_dir"),
    "logger": ("save_dir", "root_dir"),  # root_dir: the Fabric base class's name for save_dir
    "checkpoint": ("path",),
}
# What to write instead of a PROVIDED key that has a config of its own.
INSTEAD = {"trainer.logger": "choose the logger with logger=tensorboard, logger=csv or logger=none"}


def _nearest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid: {', '.join(sorted(options))}"


def _read(path: Path) -> tuple[dict, DictConfig]:
    node = OmegaConf.load(path)
    defaults = node.pop("defaults", {}) or {}
    return dict(defaults), node


def parse_argv(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split the command line into group selections and dotted overrides."""
    groups, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot read argument {arg!r}; write key=value (e.g. data.ways=20 or algorithm=imaml)")
        if key in GROUPS:
            groups[key] = value
        else:
            overrides.append(arg)
    return groups, overrides


def split_own_keys(argv: Sequence[str], keys: Sequence[str], own: dict[str, str] | None = None):
    """(`own`, updated with the `key=value` arguments whose key is one of `keys`; the other arguments): a script's
    own arguments (eval.py's `ckpt_path`, demo.py's `port`) apart from the config overrides."""
    own, overrides = dict(own or {}), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys:
            own[key] = value
        else:
            overrides.append(arg)
    return own, overrides


def _member(config_dir: Path, group: str, name: str) -> Path:
    path = config_dir / group / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or name.startswith(".") or not path.exists():
        names = [p.stem for p in (config_dir / group).glob("*.yaml")]
        raise ConfigError(f"no {group} named {name!r}{_nearest(name, names)}")
    return path


def _type_name(annotation: Any) -> str:
    """`int`, `int or null`, `one of 64, 32, '16-mixed', ...` (a Literal lists its values)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin in (typing.Union, types.UnionType):  # the values of its Literals as one list, then the other types
        args = typing.get_args(annotation)
        values = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        names = [_type_name(a) for a in args if typing.get_origin(a) is not typing.Literal]
        return " or ".join([f"one of {', '.join(map(repr, values))}"] * bool(values) + list(dict.fromkeys(names)))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a plain config value fits a type annotation (lenient for classes that a config cannot hold)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or annotation is dict:
        return isinstance(value, (dict, DictConfig))
    return True  # a class (Accelerator, Strategy, ...): Lightning checks those itself


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass an argument is annotated with (`InnerLoop`, `InnerLoop | None`), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    return next((arg for arg in typing.get_args(annotation) if dataclasses.is_dataclass(arg)), None)


def _check_dataclass_node(node: DictConfig, cls: type, where: str) -> None:
    """A dict bound to a dataclass argument: every key one of its fields, every value of the field's type."""
    hints = typing.get_type_hints(cls)
    for key in node:
        if key not in hints:
            raise ConfigError(f"unknown key {where}.{key} for {cls.__name__}{_nearest(key, list(hints))}")
        if not _matches(node[key], hints[key]):
            raise ConfigError(f"{where}.{key}={node[key]!r} has the wrong type; {cls.__name__} expects "
                              f"{_type_name(hints[key])}")  # fmt: skip


def fill_defaults(node: DictConfig, provided: Sequence[str] = ()) -> None:
    """Write a `_target_` node's constructor defaults into it for every argument it leaves out (a dataclass default
    as a dict of its fields, also completing a partial dict), so that a YAML lists only what it changes while every
    key can still be overridden and the saved config is complete."""
    for name, param in signature_params(import_target(node._target_)).items():
        default = param.default
        if name in provided:
            continue
        if dataclasses.is_dataclass(default):
            fields = dataclasses.asdict(default)
            if name not in node:
                node[name] = fields
            elif isinstance(node[name], DictConfig):
                for key, value in fields.items():
                    if key not in node[name]:
                        node[name][key] = value
        elif name not in node and (default is None or isinstance(default, (bool, int, float, str, list, tuple))):
            node[name] = list(default) if isinstance(default, tuple) else default


def import_target(path: str) -> Any:
    """The callable a `_target_` names (`lightning_meta.algorithms.MAML`); a `ConfigError` when it cannot be
    imported."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"_target_ {path!r} cannot be imported ({error}); check the module path") from error


def signature_params(target: Any) -> dict[str, inspect.Parameter]:
    """The keyword arguments `target` accepts. A constructor that passes `**kwargs` on to its parent's is read
    together with the parent's (a subclass lists only the arguments it adds or whose defaults it changes)."""
    chain = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    params: dict[str, inspect.Parameter] = {}
    for fn in chain:
        hints = typing.get_type_hints(fn)
        own = inspect.signature(fn).parameters
        for name, p in own.items():
            if name != "self" and name not in params:
                params[name] = p.replace(annotation=hints.get(name, p.annotation))
        if not any(p.kind is p.VAR_KEYWORD for p in own.values()):
            return {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params


def check_node(node: DictConfig, where: str, provided: Sequence[str] = ()) -> None:
    """Bind a `_target_` node to its callable's signature: every key known, every value of the annotated type."""
    params = signature_params(import_target(node._target_))
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in node:
        if key == "_target_":
            continue
        if key not in params:
            if takes_kwargs:
                continue
            raise ConfigError(f"unknown key {where}.{key} for {node._target_}{_nearest(key, list(params))}")
        value = node[key]
        if OmegaConf.is_config(value) and "_target_" in value:
            check_node(value, f"{where}.{key}")
        elif isinstance(value, DictConfig) and _dataclass_of(params[key].annotation):
            _check_dataclass_node(value, _dataclass_of(params[key].annotation), f"{where}.{key}")
        elif not _matches(OmegaConf.to_object(value) if OmegaConf.is_config(value) else value, params[key].annotation):
            expected = _type_name(params[key].annotation)
            raise ConfigError(f"{where}.{key}={value!r} has the wrong type; {node._target_} expects {expected}")
    missing = [
        k for k, p in params.items()
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and k not in node
        and k not in provided
    ]  # fmt: skip
    if missing:
        raise ConfigError(f"{where} lacks required key(s) {', '.join(missing)} of {node._target_}")


def _apply_override(cfg: DictConfig, override: str) -> None:
    key, _, _ = override.partition("=")
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        raise ConfigError(f"unknown key {key}{_nearest(key, _all_keys(cfg))}")
    if leaf not in parent and "_target_" not in parent:  # a _target_ node takes any argument of its signature
        raise ConfigError(f"unknown key {key}{_nearest(key, _all_keys(cfg))}")
    text = override.partition("=")[2]
    if "${" in text:
        raise ConfigError(f"{override}: interpolations (${{...}}) work in YAML files only; write the value itself")
    parent[leaf] = OmegaConf.from_dotlist([f"v={text}"])["v"]


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k in cfg:
        full = f"{prefix}{k}"
        keys.append(full)
        v = cfg._get_node(k)
        if isinstance(v, DictConfig):
            keys += _all_keys(v, f"{full}.")
    return keys


def load_config(argv: Sequence[str] = (), config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Compose `train.yaml`, the selected group members and the overrides; validate everything."""
    base_defaults, base = _read(config_dir / "train.yaml")
    groups, overrides = parse_argv(argv)
    selection = {**base_defaults}
    experiment = groups.get("experiment", base_defaults.get("experiment"))
    exp_defaults, exp_node = ({}, OmegaConf.create())
    if experiment:
        exp_defaults, exp_node = _read(_member(config_dir, "experiment", experiment))
    data_name = groups.get("data", exp_defaults.get("data", selection.get("data")))
    data_defaults, _ = _read(_member(config_dir, "data", data_name))
    selection.update(data_defaults)
    selection.update(exp_defaults)
    selection.update(groups)
    cfg = base
    for group in NODE_GROUPS:
        _, node = _read(_member(config_dir, group, selection[group]))
        cfg[group] = node
    _apply_data_settings(cfg, selection["algorithm"])
    cfg = OmegaConf.merge(cfg, exp_node)
    _fill_algorithm(cfg)
    for override in overrides:
        _apply_override(cfg, override)
    _fill_algorithm(cfg)  # again, for an overridden algorithm._target_
    cfg.selection = {g: selection.get(g) for g in GROUPS}
    _validate(cfg)
    return cfg


def _apply_data_settings(cfg: DictConfig, algorithm: str) -> None:
    """A data member's `algorithm_settings.<algorithm>`: the algorithm keys that dataset needs (e.g. sine regression's
    inner step sizes), below the experiment and the command line."""
    settings = cfg.data.pop("algorithm_settings", None) or {}
    if algorithm in settings:
        cfg.algorithm = OmegaConf.merge(cfg.algorithm, settings[algorithm])


def _fill_algorithm(cfg: DictConfig) -> None:
    if "_target_" in cfg.get("algorithm", {}):
        fill_defaults(cfg.algorithm, PROVIDED["algorithm"])


def override_config(saved: dict, overrides: Sequence[str] = ()) -> DictConfig:
    """A run's saved (resolved) config with `dotted.key=value` overrides, validated like `load_config`.

    The saved config has its interpolations resolved, so an override changes that key only: `seed=1` leaves
    `data.seed` as trained (override `data.seed` to draw other episodes). Group selections cannot change.
    """
    groups, dotted = parse_argv(overrides)
    if groups:
        chosen = " ".join(f"{group}={name}" for group, name in groups.items())
        raise ConfigError(
            f"{chosen} selects a config group, which a saved run cannot change; override its keys instead "
            "(e.g. algorithm.eval_inner.steps=10 or data.shots=5)"
        )
    cfg = OmegaConf.create(saved)
    for override in dotted:
        _apply_override(cfg, override)
    _validate(cfg)
    return cfg


def _validate(cfg: DictConfig) -> None:
    for key, annotation in RUN_KEYS.items():
        if key not in cfg:
            raise ConfigError(f"train.yaml lacks the run key {key}")
        if not _matches(cfg[key], annotation):
            raise ConfigError(f"{key}={cfg[key]!r} has the wrong type; expected {_type_name(annotation)}")
    extra = set(cfg) - set(RUN_KEYS) - set(GROUPS) - set(RUN_NODES) - {"selection"}
    if extra:
        raise ConfigError(f"unknown top-level key(s) {', '.join(sorted(extra))}{_nearest(min(extra), RUN_KEYS)}")
    try:
        OmegaConf.resolve(cfg)
    except Exception as error:  # an interpolation that names a missing key
        raise ConfigError(f"cannot resolve the config: {error}") from error
    for group in (*NODE_GROUPS, *RUN_NODES):
        if group in ("logger", *RUN_NODES) and (group not in cfg or cfg[group].get("_target_", 0) is None):
            continue  # optional (absent from configs saved before it existed), or `_target_: null` for none
        if "_target_" not in cfg[group]:
            raise ConfigError(f"{group} config has no _target_")
        for key in PROVIDED.get(group, ()):
            if key in cfg[group]:
                instead = INSTEAD.get(f"{group}.{key}", "remove it from the config")
                raise ConfigError(f"{group}.{key} is set by train.py itself; {instead}")
        check_node(cfg[group], group, PROVIDED.get(group, ()))
    OmegaConf.set_struct(cfg, True)


def instantiate(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Call `node._target_` with the node's other keys (nested `_target_` nodes first) and `kwargs`."""
    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = import_target(spec.pop("_target_"))
    args = {k: instantiate(v) if isinstance(v, dict) and "_target_" in v else v for k, v in spec.items()}
    return target(**args, **kwargs)
