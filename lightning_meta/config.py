"""Hydra composes the config; this module checks it against the code and builds objects from it.

`configs/train.yaml` lists one member of each config group in its defaults list; Hydra composes them with the
command line (Hydra's override grammar: `group=name`, `dotted.key=value`, `+key=value`, `~key`, sweeps under `-m`).
Every node with `_target_` must then bind to that callable's signature: unknown keys and wrong types are errors that
name the key, the expected type and the nearest valid keys. A default is written once, in the constructor's
signature: `fill_defaults` copies it into the composed config, so `--cfg` and the run's saved config show every key.
Composition errors of Hydra itself become the same one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_meta.errors import ConfigError


def _config_dir() -> Path:
    """configs/ inside the installed package (a wheel), else the checkout's top-level configs/."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if (packaged / "train.yaml").is_file() else packaged.parent.parent / "configs"


CONFIG_DIR = _config_dir()
GROUPS = ("algorithm", "model", "data", "trainer", "logger", "callbacks", "debug", "experiment", "hparams_search")
# Groups whose member is one `_target_` node of the composed config.
NODE_GROUPS = ("algorithm", "data", "model", "trainer")
# Top-level keys and their types (they have no constructor to bind to).
RUN_KEYS: dict[str, Any] = {
    "seed": int, "output_dir": str | None, "ckpt_path": str | None, "tags": list, "threads": int | None,
}  # fmt: skip
OPTIONAL_RUN_KEYS = ("tags", "threads")  # a checkpoint's saved config may lack them
# Arguments filled in by train() itself, never from the config.
PROVIDED = {"algorithm": ("backbone", "task"), "trainer": ("callbacks", "logger", "default_root_dir")}
# Arguments train() fills in when a node leaves them out: a logger's folder, a checkpoint's path, the monitored
# metric (val/acc or val/mse, by the task).
FILLED = {"logger": ("save_dir", "root_dir"), "callbacks": ("path", "monitor")}
# What to write instead of a PROVIDED key that has a config of its own.
INSTEAD = {
    "trainer.logger": "choose the logger with logger=none (or tensorboard, csv, mlflow, wandb, many)",
    "trainer.callbacks": "add callbacks with callbacks=[default,early_stopping] or +callbacks.<name>._target_=...",
}


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run directory a checkpoint belongs to: `<run>` for `<run>/checkpoints/<name>.ckpt`, else its folder."""
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def default_run_dir(output_dir: str | None, ckpt_path: str | None) -> str:
    """hydra.run.dir: output_dir; else, resuming, the checkpoint's run; else outputs/<date>_<time>."""
    if output_dir:
        return str(output_dir)
    if ckpt_path:
        return str(run_dir_of(ckpt_path))
    return f"outputs/{datetime.now():%Y-%m-%d_%H-%M-%S}"


def _sweep_dir(output_dir: str | None) -> str:
    return str(output_dir) if output_dir else f"outputs/{datetime.now():%Y-%m-%d_%H-%M-%S}_sweep"


def _job_name(override_dirname: str) -> str:
    """A job directory's name: Hydra's override_dirname without the `+`/`++` of keys set as arguments."""
    return re.sub(r"(^|,)\+{1,2}(?=[\w/])", r"\1", override_dirname)


# configs/hydra/default.yaml's run and sweep directories follow output_dir through these (cached: one timestamp
# per run).
for _name, _fn in (("lm.run_dir", default_run_dir), ("lm.sweep_dir", _sweep_dir), ("lm.job_name", _job_name)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn, use_cache=True)


def _nearest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid: {', '.join(sorted(options))}"


def hydra_app(
    config_name: str = "train", config_path: str | Path | None = None, config_dir: str | None = None,
    stored: bool = False,
):
    """Hydra's application object: the primary config folder (`config_path`, else configs/), an extra folder
    searched first (`config_dir`, Hydra's --config-dir), then Hydra's own and the plugins' search paths.
    `stored`: the primary config is a node in Hydra's ConfigStore (eval.py's checkpoint config), not a file."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    primary = Path(config_path or CONFIG_DIR).expanduser().resolve()
    if not stored and not (primary / f"{config_name}.yaml").is_file():
        raise ConfigError(f"no config {primary / config_name}.yaml; give --config-path <folder> and --config-name "
                          "<name> of a saved config (e.g. --config-path outputs/<run>/.hydra --config-name config)")
    search = create_automatic_config_search_path(None, None, str(primary))
    if config_dir:
        extra = Path(config_dir).expanduser().resolve()
        if not extra.is_dir():
            raise ConfigError(f"--config-dir {config_dir} is not a folder")
        search.prepend("command-line", f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name=config_name, config_search_path=search)


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", config_path: str | Path | None = None
) -> DictConfig:
    """The config Hydra composes from `config_name` and the command-line overrides, with its `hydra` node; Hydra's
    composition errors (an unknown member, key or syntax) become a one-line ConfigError."""
    return compose_app(hydra_app(config_name, config_path), config_name, overrides)[0]


def compose_app(app: Any, config_name: str, overrides: Sequence[str], mode: Any = None) -> tuple[DictConfig, list[str]]:
    """(the composed config, the overrides as composed): `app.compose_config` with `with_arguments`, and Hydra's
    composition errors as one-line ConfigErrors."""
    mode = mode or run_mode()
    overrides = list(overrides)
    _check_members(app, overrides)
    _note_repeats(overrides)
    with hydra_errors(app, config_name, overrides):
        compose = lambda o: app.compose_config(config_name, o, run_mode=mode, with_log_configuration=False)
        return with_arguments(compose, app.config_loader, overrides)


def with_arguments(compose: Any, loader: Any, overrides: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """(compose(overrides), the overrides as composed), where an override of an argument the YAML does not list
    but its node's `_target_` takes becomes `++key=value` (`trainer.gradient_clip_val=0.5`,
    `algorithm.eval_inner.steps=5`: every argument of a node's callable is a key). `compose` is a run's
    composition or a sweep job's (`loader.load_sweep_config`); any other error is Hydra's own, raised."""
    from hydra.errors import ConfigCompositionException

    overrides = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            return compose(overrides), overrides
        except ConfigCompositionException as error:
            argument = _signature_override(error, compose, loader, overrides)
            if argument is None:
                raise
            overrides[argument] = f"++{overrides[argument]}"
    raise AssertionError("unreachable")


def _note_repeats(overrides: list[str]) -> None:
    """A key given twice with different values: the last wins, as in Hydra and a shell, and stderr says so (a base
    list of overrides followed by one that changes a key is a common way to write a script)."""
    last: dict[str, str] = {}
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if last.get(key, override) != override:
            print(f"note: {key} is given more than once; the last, {override}, wins", file=sys.stderr)
        last[key] = override


def _check_members(app: Any, overrides: list[str]) -> None:
    """A group selection names a member, not a path (`experiment=../train` would load train.yaml)."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if ("/" in value or value.startswith(".")) and app.config_loader.repository.group_exists(key):
            options = app.config_loader.get_group_options(key)
            raise ConfigError(f"no {key} named {value!r}{_nearest(value, options)}")


def _applied_before(loader: Any, overrides: list[str], index: int) -> list[str]:
    """The overrides Hydra applied before `overrides[index]` failed: every group selection (applied first), then
    the key overrides in order."""
    groups = [o for o in overrides[index + 1 :]
              if loader.repository.group_exists(o.lstrip("+~").partition("=")[0])]  # fmt: skip
    return overrides[:index] + groups


def _signature_override(error: Exception, compose: Any, loader: Any, overrides: list[str]) -> int | None:
    """The index of the override `node.key[.field]=value` that Hydra refused only because the YAML does not list
    `key`, while `node`'s `_target_` takes it; None for any other error."""
    unknown = re.match(r"Could not override '([\w.]+)'", str(error))
    key = unknown[1] if unknown else ""
    index = next((i for i, o in enumerate(overrides) if o.partition("=")[0] == key), None)
    if index is None or "." not in key:
        return None
    try:
        depth, node = _target_node(compose(_applied_before(loader, overrides, index)), key)
        takes = key.split(".")[depth] in signature_params(import_target(node._target_))
    except Exception:  # the rest does not compose, no node has a _target_, or it cannot be read: Hydra's error stands
        return None
    return index if takes else None


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a config's values (not of its nodes, `_target_` or `hydra`), for suggestions."""
    keys = []
    for k in cfg if isinstance(cfg, DictConfig) else ():
        node = cfg._get_node(k)
        if isinstance(node, DictConfig):
            keys += _all_keys(node, f"{prefix}{k}.") if k != "hydra" else []
        elif k != "_target_":
            keys.append(f"{prefix}{k}")
    return keys


def _composition_message(error: Exception, app: Any, config_name: str, overrides: Sequence[str]) -> str:
    """Hydra's multi-line composition error as one line that names the fix."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("See ")]
    missing = re.search(r"Could not find '([\w/]+)/([^']*)'", text)
    if missing:
        group, name = missing[1], missing[2]
        options = re.findall(r"^\t(\S+)$", text, re.M)
        return f"no {group} named {name!r}{_nearest(name, options)}"
    unknown = re.match(r"Could not (?:override|delete) '([^']+)'", lines[0]) if lines else None
    if unknown:
        return _unknown_key_message(unknown[1].lstrip("+~"), app, config_name, list(overrides))
    parse = re.match(r"Error parsing override '(.*)'$", lines[0]) if lines else None
    if parse is None and getattr(error, "override", None):  # OverrideParseException: the override, the reason
        parse, lines = [None, error.override], ["", *lines]
    if parse:
        why = " ".join(lines[1:])
        why = "" if why.startswith("missing EQUAL") else f"; {why}"
        return f"cannot read argument {parse[1]!r}; write key=value (e.g. data.ways=20 or algorithm=imaml{why})"
    return " ".join(lines) or type(error).__name__


def _unknown_key_message(key: str, app: Any, config_name: str, overrides: list[str]) -> str:
    """`unknown key data.wayz for <its node's _target_>; did you mean ways?`, or among all keys when no node with a
    `_target_` holds it."""
    index = next((i for i, o in enumerate(overrides) if o.lstrip("+~").partition("=")[0] == key), None)
    try:
        rest = _applied_before(app.config_loader, overrides, index) if index is not None else []
        compose = lambda o: app.compose_config(config_name, o, run_mode=run_mode(), with_log_configuration=False)
        cfg, _ = with_arguments(compose, app.config_loader, rest)
    except Exception:  # the other overrides do not compose either: no suggestion
        return f"unknown key {key}"
    found = _target_node(cfg, key)
    if found is not None:
        depth, node = found
        params = signature_params(import_target(node._target_))
        leaf = key.split(".")[depth]
        if leaf not in params:
            return f"unknown key {key} for {node._target_}{_nearest(leaf, list(params))}"
    return f"unknown key {key}{_nearest(key, _all_keys(cfg))}"


def _target_node(cfg: DictConfig, key: str) -> tuple[int, DictConfig] | None:
    """(its depth, the node) of the deepest node with a `_target_` above the dotted `key`, if any."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]))
        if isinstance(node, DictConfig) and node.get("_target_"):
            return i, node
    return None


def run_mode(name: str = "RUN"):
    """Hydra's RunMode of that name (RUN, MULTIRUN), imported when needed."""
    from hydra.types import RunMode

    return RunMode[name]


@contextmanager
def hydra_errors(app: Any = None, config_name: str = "train", overrides: Sequence[str] = ()) -> Iterator[None]:
    """Around a Hydra composition: its errors (HydraException, OmegaConf's errors) are a user's mistake."""
    from hydra.errors import HydraException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_composition_message(error, app, config_name, overrides)) from error
    except ValueError as error:  # Hydra's own checks of the overrides (e.g. group=null) raise ValueError
        if not raised_in(error, ("hydra",)):
            raise
        raise ConfigError(f"{_composition_message(error, app, config_name, overrides)} (remove a group's member "
                          "with ~group, e.g. ~logger, or choose another: logger=none)") from error  # fmt: skip


def raised_in(error: BaseException, packages: Sequence[str]) -> bool:
    """Whether the innermost frame of `error`'s traceback is in one of `packages` (its own check, not a bug that
    passed through it)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").partition(".")[0] in packages


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
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"_target_={path!r} is not a dotted path; give module.Callable, e.g. "
                          "lightning_meta.algorithms.MAML")  # fmt: skip
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
        try:
            hints = typing.get_type_hints(fn)
        except NameError:  # a name imported only for type checkers (WandbLogger's `Run`): resolve each on its own
            hints = {}
            for name, annotation in inspect.get_annotations(fn).items():
                try:
                    hints[name] = eval(annotation, fn.__globals__) if isinstance(annotation, str) else annotation
                except NameError:
                    pass  # stays the annotation as written, a string, which every value matches
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
        elif _dataclass_of(params[key].annotation) and not (value is None or isinstance(value, DictConfig)):
            fields = ", ".join(f.name for f in dataclasses.fields(_dataclass_of(params[key].annotation)))
            raise ConfigError(f"{where}.{key}={value!r} is not a mapping; set its fields ({fields}), e.g. "
                              f"{where}.{key}.{dataclasses.fields(_dataclass_of(params[key].annotation))[0].name}=...")
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


def finalize(cfg: DictConfig, choices: dict | None = None) -> DictConfig:
    """The task config of a composed one: without its `hydra` node, `selection` recording the member Hydra chose
    for each group (`choices`, else the `hydra` node's), every constructor default filled in, and everything
    checked (then read-only in structure)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    hydra_node = plain.pop("hydra", None)
    out = OmegaConf.create(plain)
    if choices is None and hydra_node is not None:
        choices = hydra_node.get("runtime", {}).get("choices", {})
    saved = out.pop("selection", None) or {}  # a rerun of a saved config: its groups were chosen then
    out.selection = {g: (choices or {}).get(g, saved.get(g)) for g in GROUPS}
    _fill_algorithm(out)
    _validate(out)
    return out


def load_config(
    argv: Sequence[str] = (), config_dir: Path | str = CONFIG_DIR, config_name: str = "train"
) -> DictConfig:
    """Compose `config_name` with Hydra and the overrides `argv`; fill and check everything (`finalize`)."""
    return finalize(compose(argv, config_name=config_name, config_path=config_dir))


def _fill_algorithm(cfg: DictConfig) -> None:
    if "_target_" in cfg.get("algorithm", {}):
        fill_defaults(cfg.algorithm, PROVIDED["algorithm"])


def override_config(saved: dict, overrides: Sequence[str] = ()) -> DictConfig:
    """A run's saved (resolved) config with overrides in Hydra's grammar (`key=value`, `+key=value`, `~key`),
    checked like `load_config`.

    The saved config has its interpolations resolved, so an override changes that key only: `seed=1` leaves
    `data.seed` as trained (override `data.seed` to draw other episodes). Group selections cannot change.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = [o for o in overrides if o.partition("=")[0] in GROUPS and o.partition("=")[2]]
    if chosen:
        raise ConfigError(
            f"{' '.join(chosen)} selects a config group, which a saved run cannot change; override its keys "
            "instead (e.g. algorithm.eval_inner.steps=10 or data.shots=5)"
        )
    cfg = OmegaConf.create(saved)
    OmegaConf.set_struct(cfg, True)
    with hydra_errors():
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        try:
            ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
        except (OmegaConfBaseException, ValueError) as error:
            key = (re.search(r"full_key: (\S+)", str(error)) or re.search(r"'([^']+)'", str(error)) or [0, ""])[1]
            raise ConfigError(f"unknown key {key}{_nearest(key, _all_keys(cfg))}") from error
    OmegaConf.set_struct(cfg, False)
    _validate(cfg)
    return cfg


def _validate(cfg: DictConfig) -> None:
    for key, annotation in RUN_KEYS.items():
        if key not in cfg and key not in OPTIONAL_RUN_KEYS:
            raise ConfigError(f"the config lacks the run key {key}")
        if key in cfg and not _matches(cfg[key], annotation):
            raise ConfigError(f"{key}={cfg[key]!r} has the wrong type; expected {_type_name(annotation)}")
    if not 0 <= cfg.seed < 2**32:  # what numpy's and torch's generators take
        raise ConfigError(f"seed={cfg.seed}; give an integer from 0 to 2**32 - 1")
    if cfg.get("threads") is not None and cfg.threads < 1:
        raise ConfigError(f"threads={cfg.threads}; give the number of CPU threads (1 or more), or null for torch's "
                          "default (one per core)")  # fmt: skip
    extra = set(cfg) - set(RUN_KEYS) - set(GROUPS) - {"selection"}
    if extra:
        raise ConfigError(f"unknown top-level key(s) {', '.join(sorted(extra))}{_nearest(min(extra), RUN_KEYS)}")
    try:
        OmegaConf.resolve(cfg)
    except Exception as error:  # an interpolation that names a missing key
        raise ConfigError(f"cannot resolve the config: {error}") from error
    for group in NODE_GROUPS:
        if "_target_" not in cfg.get(group, {}):
            raise ConfigError(f"{group} config has no _target_")
        for key in PROVIDED.get(group, ()):
            if key in cfg[group]:
                instead = INSTEAD.get(f"{group}.{key}", "remove it from the config")
                raise ConfigError(f"{group}.{key} is set by train.py itself; {instead}")
        check_node(cfg[group], group, PROVIDED.get(group, ()))
    for group in ("logger", "callbacks"):
        for where, node in named_nodes(cfg.get(group), group):
            check_node(node, where, FILLED[group])
    OmegaConf.set_struct(cfg, True)


def named_nodes(node: Any, where: str) -> list[tuple[str, DictConfig]]:
    """The `_target_` nodes of a logger or callbacks config as (dotted name, node): none for null or
    `_target_: null`, the node itself, or each entry of a mapping of names to nodes (`logger=many`, callbacks)."""
    if node is None or (isinstance(node, DictConfig) and "_target_" in node and node._target_ is None):
        return []
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{where}={node!r}: give a _target_ node, a mapping of names to _target_ nodes, or null")
    if "_target_" in node:
        return [(where, node)]
    pairs = []
    for name, child in node.items():
        if child is None:  # ~ or null: removed from the mapping
            continue
        if not isinstance(child, DictConfig) or "_target_" not in child:
            raise ConfigError(f"{where}.{name} has no _target_; each entry of {where} is a _target_ node")
        pairs.append((f"{where}.{name}", child))
    return pairs


def instantiate(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Call `node._target_` with the node's other keys (nested `_target_` nodes first) and `kwargs`."""
    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = import_target(spec.pop("_target_"))
    args = {k: instantiate(v) if isinstance(v, dict) and "_target_" in v else v for k, v in spec.items()}
    return target(**args, **kwargs)
