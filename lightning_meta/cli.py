"""The command line of train.py, eval.py and demo.py: Hydra's (`-m`, `--cfg job|hydra|all`, `--info`,
`--config-path/--config-name`, `--shell-completion`, `hydra/launcher=...`), with this project's error policy: every
user mistake (a `lightning_meta.errors.UserError`, Hydra's own composition errors included) is one line
`error: ...` on stderr and exit status 2; any other exception is a bug and keeps its traceback
(`LIGHTNING_META_DEBUG=1` shows one for a user mistake too). `--help` lists the groups, their members and every key
of the selected config with its note.

A single run is composed and checked here, then runs in this process with Hydra's config set (so Lightning's DDP
launcher re-runs the command with the same run directory). Under `-m` Hydra's sweeper and launcher run the jobs
(configs/hydra/sweeper/checked.yaml checks every job first); each job is `Job`, and the `SweepSummary` callback
(lightning_meta/sweep.py) writes `sweep.md` at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import signal
import sys
import textwrap
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lightning_meta.config import (
    CONFIG_DIR,
    GROUPS,
    NODE_GROUPS,
    RUN_KEYS,
    compose_app,
    finalize,
    hydra_app,
    hydra_errors,
    import_target,
    instantiate,
    named_nodes,
    run_mode,
    signature_params,
)
from lightning_meta.errors import ConfigError, UserError

DEBUG_ENV = "LIGHTNING_META_DEBUG"
USAGE = """usage: python train.py [--help] [--cfg job|hydra|all] [-m] [--info] [group=name ...] [key=value ...]

  --help, -h        this text, for the config the other arguments select (python train.py --help algorithm=maml)
  --cfg job         print the composed, checked config (every key) and exit; --cfg hydra|all: Hydra's part too
  -m                sweep: every combination of the comma lists, glob(), range() (hydra/launcher=joblib: in
                    parallel; =submitit_slurm: on a SLURM cluster); hparams_search=NAME: an Optuna search
  --info            Hydra's search path, defaults list and config sources; --hydra-help: Hydra's own options
  --config-path P --config-name N   compose another primary config (rerun a run: P=<run>/.hydra N=config)
  +key=value, ~key, key=null        add a key, remove one, set one to null (Hydra's override grammar)
  LIGHTNING_META_DEBUG=1 python train.py ...   shows the traceback behind an error message"""


def guarded(fn: Callable[[], Any], exiting: bool = False) -> int:
    """Run `fn`; a `UserError` becomes `error: <message>` on stderr and exit status 2, any other exception
    propagates with its traceback. A run that Ctrl-C or SIGTERM stopped (after its `resume with ckpt_path=...`
    line) or interrupted exits as a shell reports a process that signal ended: 128 + the signal's number, 130 or
    143 (`lightning_meta.callbacks.LastCheckpoint` tells which signal; `SignalExit` carries it). The process group a
    distributed run opened is closed before returning (`end_distributed`). `exiting`: the process ends with this
    status (a command, not a call from Python), so signals after a stop are ignored until it has."""

    def stop_signal() -> int | None:  # the module is imported by a run only (not by --help or --cfg)
        callbacks = sys.modules.get("lightning_meta.callbacks")
        return callbacks.LastCheckpoint.take_stop_signal() if callbacks is not None else None

    stop_signal()  # forget a stop of an earlier run in this process (a test, a notebook)
    try:
        fn()
    except UserError as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # a second signal interrupted the run at once
        callbacks = sys.modules.get("lightning_meta.callbacks")
        if callbacks is None or not isinstance(stop, callbacks.SignalExit):
            raise
        return stop.code
    finally:
        end_distributed()
    signum = stop_signal()
    if signum and exiting:  # the command ends with that status now: a repeated Ctrl-C must not become a traceback
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return 128 + signum if signum else 0


def end_distributed() -> None:
    """Destroy the default process group, if one is open. Lightning does so at exit for NCCL only; a gloo group
    left to the interpreter's teardown can abort a rank ("terminate called without an active exception", seen in
    multi-node CPU runs), and its peer's launcher then waits for it until killed."""
    dist = sys.modules.get("torch.distributed")  # never imported (--help, --cfg): no group to close
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            raise ConfigError(f"unknown option {unknown[1]}; see --help for the options (Hydra's, e.g. -m, --cfg)")
        raise ConfigError(f"{message} (see --help)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Hydra's command-line flags and overrides; an unknown flag is a one-line error."""
    from hydra._internal.utils import get_args_parser

    hydra_parser = get_args_parser()
    parser = _Parser(add_help=False, prog=hydra_parser.prog)
    for action in hydra_parser._actions:
        parser._add_action(action)
    return parser.parse_intermixed_args(list(argv))


def _cfg_job_by_default(argv: list[str]) -> list[str]:
    """`--cfg` alone means `--cfg job` (Hydra wants the word)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in ("--cfg", "-c") and (i + 1 == len(argv) or "=" in argv[i + 1] or argv[i + 1].startswith("-")):
            out.append("job")
    return out


def main(argv: Sequence[str] | None, task: Callable[[DictConfig], dict], config_name: str = "train") -> int:
    """The entry of train.py (and of any script built the same way): returns the exit status."""
    exiting, argv = argv is None, list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: _dispatch(argv, task, config_name), exiting)


def _dispatch(argv: list[str], task: Callable[[DictConfig], dict], config_name: str) -> None:
    if "-h" in argv or "--help" in argv:
        print(help_text([a for a in argv if a not in ("-h", "--help")], config_name))
        return
    args = parse_args(_cfg_job_by_default(argv))
    name, where = args.config_name or config_name, args.config_path
    if where is not None and not Path(where).expanduser().is_absolute():
        where = str(Path.cwd() / where)  # relative to the working directory, where the user reruns from
    app = hydra_app(name, where, args.config_dir)
    commands = [flag for flag in ("run", "multirun", "shell_completion") if getattr(args, flag)]
    commands += ["cfg"] * (args.cfg is not None) + ["info"] * (args.info is not None)
    if len(commands) > 1:
        raise ConfigError("give only one of --run, -m, --cfg, --info and --shell-completion")
    if args.hydra_help:
        from hydra._internal.utils import get_args_parser

        app.hydra_help(config_name=name, args_parser=get_args_parser(), args=args)
    elif args.cfg is not None:
        show_cfg(app, name, args)
    elif args.info is not None:
        app.show_info(args.info, config_name=name, overrides=args.overrides)
    elif args.shell_completion:
        app.shell_completion(config_name=name, overrides=args.overrides)
    else:
        with hydra_errors(app, name, args.overrides):
            mode = app.get_mode(config_name=name, overrides=args.overrides)
        many = args.multirun or str(mode) == "RunMode.MULTIRUN"
        overrides = [*args.overrides, *([f"hydra.mode={'MULTIRUN' if many else 'RUN'}"] if mode is None else [])]
        (multirun if many else run)(app, name, overrides, task)


def show_cfg(app: Any, name: str, args: argparse.Namespace) -> None:
    """--cfg job|all: the composed config, every default filled in and checked (resolved); --cfg hydra: Hydra's."""
    if args.cfg == "hydra":
        app.show_cfg(config_name=name, overrides=args.overrides, cfg_type="hydra", package=args.package,
                     resolve=args.resolve)  # fmt: skip
        return
    cfg, _ = compose_app(app, name, args.overrides)
    job = finalize(cfg)
    if args.cfg == "all":
        with open_dict(job):
            job.hydra = cfg.hydra
    node = OmegaConf.select(job, args.package) if args.package else job
    if args.package and node is None:
        raise ConfigError(f"--package {args.package}: no such key in the config")
    print(OmegaConf.to_yaml(node) if OmegaConf.is_config(node) else node, end="")


def run(app: Any, name: str, overrides: list[str], task: Callable[[DictConfig], dict]) -> None:
    """One run in this process, as Hydra's run_job would do it but with nothing written before the checks pass."""
    from hydra.core.hydra_config import HydraConfig

    cfg, _ = compose_app(app, name, overrides)
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(str(cfg.hydra.run.dir))
    HydraConfig.instance().set_config(cfg)
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    Job(task)(task_cfg)


def multirun(app: Any, name: str, overrides: list[str], task: Callable[[DictConfig], dict]) -> None:
    """A sweep or a search through Hydra's sweeper and launcher; an error when any job failed."""
    from lightning_meta import sweep

    _, overrides = compose_app(app, name, overrides, run_mode("MULTIRUN"))  # the base config, before the sweeper
    app.multirun(config_name=name, task_function=Job(task), overrides=overrides)
    failed, total = sweep.LAST_OUTCOME.get("failed", 0), sweep.LAST_OUTCOME.get("jobs", 0)
    if failed:
        raise UserError(f"{failed} of {total} sweep jobs failed (see {sweep.LAST_OUTCOME['summary']})")


def run_dir(hydra_cfg: DictConfig) -> str:
    """The job's directory: hydra.run.dir, or under -m hydra.sweep.dir/hydra.sweep.subdir."""
    if str(hydra_cfg.mode) == "RunMode.MULTIRUN":
        return os.path.join(str(hydra_cfg.sweep.dir), str(hydra_cfg.sweep.subdir))
    return str(hydra_cfg.run.dir)


def job_config(cfg: DictConfig, hydra_cfg: DictConfig) -> DictConfig:
    """A job's checked config: `finalize`d, its output_dir the job's directory."""
    with read_write(cfg), open_dict(cfg):
        cfg.output_dir = run_dir(hydra_cfg)
    return finalize(cfg, dict(hydra_cfg.runtime.choices))


def check_job(cfg: DictConfig) -> None:
    """A sweep job's config (with its `hydra` node), checked before any job of the sweep starts: every key, the
    data's constructor, and what a sweep cannot do (resume; several processes outside SLURM)."""
    job = job_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), cfg.hydra)
    instantiate(job.data)  # its constructor's checks (the learner's need the network, which needs the data read)
    if job.ckpt_path:
        raise ConfigError("a sweep cannot resume (ckpt_path); resume each run on its own with its ckpt_path")
    devices, nodes = job.trainer.get("devices", 1), job.trainer.get("num_nodes", 1)
    many = (isinstance(devices, int) and devices > 1) or isinstance(devices, (list, tuple)) or nodes > 1
    launcher = str(cfg.hydra.launcher.get("_target_", ""))
    if (many or "ddp" in str(job.trainer.get("strategy", ""))) and "SlurmLauncher" not in launcher:
        raise ConfigError(
            "a sweep job here is one process; launch several-process (DDP) runs one by one, or sweep them on a "
            "SLURM cluster with hydra/launcher=submitit_slurm (one SLURM task per device)"
        )


def saved_run_main(
    argv: Sequence[str] | None, name: str, own: dict[str, Any], usage: str, task: Callable[[dict, list[str]], None]
) -> int:
    """The command line of a script over a trained run (eval.py, demo.py): its own keys (`own`: name -> default,
    None for required; ckpt_path among them) and overrides of the checkpoint's saved config. Hydra composes the
    saved config with both (its grammar, `--cfg job`, `--info`), so a mistake is caught before anything runs; then
    `task(own values, the saved config's overrides)`."""
    exiting, argv = argv is None, list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage)
        return 0
    return guarded(lambda: _saved_run(argv, name, own, task), exiting)


def _saved_run(argv: list[str], name: str, own: dict[str, Any], task: Callable[[dict, list[str]], None]) -> None:
    from hydra.core.config_store import ConfigStore
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lightning_meta.resume import read_checkpoint

    args = parse_args(argv)
    if args.multirun or args.shell_completion:
        raise ConfigError(f"{name}.py takes one checkpoint and one setting; run it once per setting")
    with hydra_errors(overrides=args.overrides):
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    given = {o.key_or_group: o.value() for o in parsed if o.key_or_group in own}
    ckpt_path = given.get("ckpt_path", own.get("ckpt_path"))
    if not ckpt_path:
        raise ConfigError(f"give the checkpoint to evaluate: {name}.py ckpt_path=<run>/checkpoints/<name>.ckpt")
    chosen = [o.input_line for o in parsed if o.key_or_group in GROUPS and not o.is_delete()]
    if chosen:
        raise ConfigError(
            f"{' '.join(chosen)} selects a config group, which a saved run cannot change; override its keys "
            "instead (e.g. algorithm.eval_inner.steps=10 or data.shots=5)"
        )
    saved = read_checkpoint(str(ckpt_path))["hyper_parameters"]["config"]
    ConfigStore.instance().store(name=f"{name}_checkpoint", node={**saved, **own, "ckpt_path": str(ckpt_path)})
    app = hydra_app(f"{name}_checkpoint", stored=True)
    cfg, _ = compose_app(app, f"{name}_checkpoint", args.overrides)
    values = {key: cfg[key] for key in own}
    rest = [o.input_line for o in parsed if o.key_or_group not in own]
    if args.cfg is not None or args.info is not None:
        if args.info is not None:
            app.show_info(args.info, config_name=f"{name}_checkpoint", overrides=args.overrides)
        else:
            print(OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])), end="")
        return
    task(values, rest)


# The composed (unresolved) config of the job running in this process, for `write_rerun_files`.
COMPOSED: dict[str, DictConfig] = {}


def write_rerun_files(out: Path) -> None:
    """`<out>/.hydra/`, as Hydra writes it: config.yaml (the job's composed config, with configs/hydra/default.yaml
    in its defaults, so `python train.py --config-path <out>/.hydra --config-name config` reruns it into a new
    directory), overrides.yaml and hydra.yaml. Nothing outside a Hydra run (e.g. `run.train(load_config(...))`)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or "config" not in COMPOSED:
        return
    hydra_cfg = HydraConfig.get()
    rerun = OmegaConf.to_container(COMPOSED["config"], resolve=False)
    rerun.update(output_dir=None, ckpt_path=None)
    rerun["defaults"] = [{"hydra": "default"}, "_self_"]  # configs/hydra/default.yaml, on every search path
    rerun["selection"] = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    folder = out / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(rerun), folder / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}),
                   folder / "hydra.yaml")  # fmt: skip


class Job:
    """Hydra's task function: one run of `task` on its composed config, for `python train.py` and for every job
    of -m under any launcher (picklable: joblib and submitit send it to other processes). Under -m a job whose
    directory holds test_metrics.json finished in an earlier sweep and is skipped, a user mistake is recorded in
    the job's job.json and the sweep goes on; a bug still raises."""

    def __init__(self, task: Callable[[DictConfig], dict]) -> None:
        self.task = task

    def __call__(self, cfg: DictConfig) -> dict:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        COMPOSED["config"] = cfg
        if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
            return self.task(job_config(cfg, hydra_cfg))
        out = Path(run_dir(hydra_cfg))
        record = {"overrides": list(hydra_cfg.overrides.task), "output_dir": str(out), "started": time.time()}
        done = out / "test_metrics.json"
        if done.is_file():
            record.update(status="skipped: finished earlier", metrics=json.loads(done.read_text()))
        else:
            try:
                record.update(status="ok", metrics=self.task(job_config(cfg, hydra_cfg)))
            except UserError as error:
                print(f"error: {error}", file=sys.stderr)
                record.update(status="failed", error=str(error), metrics={})
            except Exception as error:  # an Optuna search's trial stopped by its pruner (lightning_meta/search.py)
                if not isinstance(error, getattr(sys.modules.get("optuna"), "TrialPruned", ())):
                    raise
                print(f"pruned: {error}", file=sys.stderr)
                record.update(status="pruned", error=str(error), metrics={})
        record["ended"] = time.time()
        out.mkdir(parents=True, exist_ok=True)
        (out / "job.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
        return record


# ----------------------------------------------------------------- --help
def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value) if value != "" else '""'


def yaml_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """`{dotted key: end-of-line comment}` of a YAML file's `key: value  # comment` lines (nested by indent)."""
    comments, stack = {}, []  # stack: (indent, key) of the open mappings
    for line in path.read_text().splitlines() if path.exists() else []:
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):(.*?)(?:\s#\s?(.*))?$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key, _, comment = len(match[1]), match[2], match[3], match[4]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = prefix + ".".join([k for _, k in stack] + [key])
        if comment:
            comments[dotted] = comment.strip()
        stack.append((indent, key))
    return comments


def arg_docs(target: Any) -> dict[str, str]:
    """`{argument: first sentence}` from the Google-style `Args:` sections of a class (and its bases)."""
    docs: dict[str, str] = {}
    for cls in reversed(getattr(target, "__mro__", (target,))):
        text = inspect.getdoc(cls) or ""
        section = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", text, re.M)
        for name, body in re.findall(r"^[ \t]{4}(\w+)(?: \([^)]*\))?: (.*(?:\n[ \t]{6,}.*)*)", section[1] if section
                                     else "", re.M):  # fmt: skip
            sentence = " ".join(body.split())
            docs[name] = re.split(r"(?<=[.)]) (?=[A-Z])", sentence)[0][:100]
    return docs


def target_docs(target: Any) -> dict[str, Any]:
    """`arg_docs(target)`, with each dataclass-typed argument (e.g. `inner: InnerLoop`) mapped to its own docs."""
    docs: dict[str, Any] = arg_docs(target)
    for name, param in signature_params(target).items():
        classes = [param.annotation, *typing.get_args(param.annotation)]
        nested = next((c for c in classes if dataclasses.is_dataclass(c)), None)
        if nested is not None:
            docs[f"{name}."] = arg_docs(nested)
    return docs


def _note_line(key: str, note: str, width: int = 118) -> list[str]:
    """`  key=value   # note`, the note wrapped at word boundaries onto aligned `# ...` lines."""
    head = f"  {key}".ljust(44)
    if not note:
        return [head.rstrip()]
    room = max(width - max(len(head), 44) - 4, 30)
    parts = textwrap.wrap(note, room, break_on_hyphens=False) or [""]
    return [f"{head}  # {parts[0]}", *(" " * max(len(head), 44) + f"  # {p}" for p in parts[1:])]


def _node_lines(node: Any, where: str, comments: dict[str, str], docs: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in node.items():
        dotted = f"{where}.{key}"
        if isinstance(value, dict) and "_target_" not in value:
            lines += _node_lines(value, dotted, comments, docs.get(f"{key}.", {}))
            continue
        lines += _note_line(f"{dotted}={_fmt(value)}", comments.get(dotted) or docs.get(key, ""))
    return lines


def _member_files(group: str, chosen: Any, config_dir: Path) -> list[Path]:
    names = chosen if isinstance(chosen, list) else [chosen] if chosen else []
    return [p for p in (config_dir / group / f"{n}.yaml" for n in names) if p.is_file()]


def _comments(group: str, chosen: Any, config_dir: Path) -> dict[str, str]:
    """The end-of-line comments of a group's selected member files, by dotted key of the composed config (a file
    under `# @package _global_` is read from the top, any other under `<group>.`)."""
    notes: dict[str, str] = {}
    for path in _member_files(group, chosen, config_dir):
        top = path.read_text().startswith("# @package _global_")
        notes.update(yaml_comments(path, "" if top else f"{group}."))
    return notes


def _wrapped(label: str, words: list[str], width: int = 118) -> list[str]:
    return textwrap.wrap(" ".join(words), width, initial_indent=f"  {label:<15}", subsequent_indent=" " * 17)


def help_text(argv: Sequence[str], config_name: str = "train", config_dir: Path = CONFIG_DIR) -> str:
    """Usage, the groups and their members, and every key of the selected config with its value and note."""
    app = hydra_app(config_name, config_dir)
    composed, _ = compose_app(app, config_name, argv)
    choices = dict(composed.hydra.runtime.choices)
    cfg = finalize(composed)
    plain = OmegaConf.to_container(cfg, resolve=True)
    lines = [USAGE, "", "groups (the selected member in [brackets]; choose with group=name):"]
    for group in (*GROUPS, "hydra/launcher", "hydra/sweeper"):
        chosen = choices.get(group)
        chosen = chosen if isinstance(chosen, list) else [chosen]
        names = sorted(app.config_loader.get_group_options(group))
        lines += _wrapped(group, [f"[{n}]" if n in chosen else n for n in names])
    notes = yaml_comments(config_dir / f"{config_name}.yaml")
    lines += ["", f"run keys (configs/{config_name}.yaml):"]
    for key in RUN_KEYS:
        if key in plain:
            lines += _note_line(f"{key}={_fmt(plain[key])}", notes.get(key, ""))
    for group in NODE_GROUPS:
        node = plain[group]
        lines += ["", f"{group} (configs/{group}/{choices.get(group)}.yaml -> {node['_target_']}):"]
        docs = target_docs(import_target(node["_target_"]))
        comments = _comments(group, choices.get(group), config_dir)
        lines += _node_lines({k: v for k, v in node.items() if k != "_target_"}, group, comments, docs)
    for group in ("logger", "callbacks"):
        pairs = named_nodes(cfg.get(group), group)
        lines += ["", f"{group} (configs/{group}/{choices.get(group)}.yaml{'' if pairs else ': none'}):"]
        comments = _comments(group, choices.get(group), config_dir)
        for where, node in pairs:
            target = node._target_
            lines += _note_line(f"{where}._target_={target}", comments.get(where, ""))
            entries = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
            lines += _node_lines(entries, where, comments, target_docs(import_target(target)))
    lines += ["", *textwrap.wrap("Any key above can be set as dotted.key=value, and so can every other argument "
                                 "of a node's _target_ (trainer.<argument>: any of pytorch_lightning.Trainer's); "
                                 "+key=value adds a key, ~key removes one.", 118)]  # fmt: skip
    return "\n".join(lines)
