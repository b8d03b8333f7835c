"""The command line around `load_config`: `--help`, `--cfg` (print the composed config and exit), `-m` sweeps, and
the error policy: every user mistake (a `lightning_meta.errors.UserError`) is one line `error: ...` on stderr and exit
status 2; any other exception is a bug and keeps its traceback (`LIGHTNING_META_DEBUG=1` shows one for a user mistake
too).

A sweep (`-m seed=0,1,2 algorithm=reptile,fomaml`) composes and validates every combination first, then runs
them one after another, each in `<output_dir>/<i>_<key=value,...>`, and ends with a table of their test metrics
(also written to `<output_dir>/sweep.md`). Commas inside brackets or quotes are values, not sweeps
(`model.hidden=[40,40]`).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_meta.build import resolve_output_dir
from lightning_meta.config import (
    CONFIG_DIR,
    GROUPS,
    NODE_GROUPS,
    RUN_KEYS,
    RUN_NODES,
    import_target,
    load_config,
    signature_params,
)
from lightning_meta.errors import ConfigError, UserError

DEBUG_ENV = "LIGHTNING_META_DEBUG"
USAGE = """usage: python train.py [--help] [--cfg] [-m] [group=name ...] [dotted.key=value ...]

  --help    this text, for the config the other arguments select (python train.py --help algorithm=maml)
  --cfg     print the composed config (every key, resolved) and exit without training
  -m        sweep: comma lists run one after another, e.g. -m seed=0,1,2 algorithm=reptile,fomaml
  LIGHTNING_META_DEBUG=1 python train.py ...   shows the traceback behind an error message"""
FLAGS = ("--help", "-h", "--cfg", "-m", "--multirun")


def guarded(fn: Callable[[], Any]) -> int:
    """Run `fn`; a `UserError` becomes `error: <message>` on stderr and exit status 2, any other exception
    propagates with its traceback. The process group a distributed run opened is closed before returning
    (`end_distributed`)."""
    try:
        fn()
    except UserError as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        end_distributed()
    return 0


def end_distributed() -> None:
    """Destroy the default process group, if one is open. Lightning does so at exit for NCCL only; a gloo group
    left to the interpreter's teardown can abort a rank ("terminate called without an active exception", seen in
    multi-node CPU runs), and its peer's launcher then waits for it until killed."""
    dist = sys.modules.get("torch.distributed")  # never imported (--help, --cfg): no group to close
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None, train: Callable[[DictConfig], dict]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {a for a in argv if a.startswith("-")}
    args = [a for a in argv if not a.startswith("-")]

    def run() -> None:
        unknown = sorted(flags - set(FLAGS))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]}; the options are {', '.join(FLAGS)} (see --help)")
        if flags & {"--help", "-h"}:
            print(help_text(args))
        elif flags & {"-m", "--multirun"}:
            sweep(args, train, print_only="--cfg" in flags)
        elif "--cfg" in flags:
            print(OmegaConf.to_yaml(load_config(args)), end="")
        else:
            train(load_config(args))

    return guarded(run)


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


def _node_lines(node: Any, where: str, comments: dict[str, str], docs: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in node.items():
        dotted = f"{where}.{key}"
        if isinstance(value, dict) and "_target_" not in value:
            lines += _node_lines(value, dotted, comments, docs.get(f"{key}.", {}))
            continue
        note = comments.get(dotted) or docs.get(key, "")
        lines.append((f"  {dotted}={_fmt(value)}".ljust(44) + (f"  # {note}" if note else ""))[:118])
    return lines


def help_text(argv: Sequence[str], config_dir: Path = CONFIG_DIR) -> str:
    """Usage, the groups and their members, and every key of the selected config with its value and comment."""
    cfg = load_config(argv, config_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    lines = [USAGE, "", "groups (the selected member in [brackets]):"]
    for group in GROUPS:
        names = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        chosen = cfg.selection.get(group)
        lines.append(f"  {group:<11}" + " ".join(f"[{n}]" if n == chosen else n for n in names))
    comments = yaml_comments(config_dir / "train.yaml")
    lines += ["", "run keys (configs/train.yaml):"]
    lines += [f"  {key}={_fmt(plain[key])}".ljust(44) + f"  # {comments.get(key, '')}" for key in RUN_KEYS]
    for name in (*NODE_GROUPS, *RUN_NODES):
        node = plain.get(name)
        if node is None:
            continue
        source = "configs/train.yaml" if name in RUN_NODES else f"configs/{name}/{cfg.selection[name]}.yaml"
        target = node.get("_target_")
        lines += ["", f"{name} ({source}{f' -> {target}' if target else ': none'}):"]
        notes = yaml_comments(config_dir / source.removeprefix("configs/"), "" if name in RUN_NODES else f"{name}.")
        docs = target_docs(import_target(target)) if target else {}
        lines += _node_lines({k: v for k, v in node.items() if k != "_target_"}, name, notes, docs)
    lines += ["", "Any key above can be set as dotted.key=value; trainer.<argument> takes every argument of "
              "pytorch_lightning.Trainer."]  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------- sweeps
def split_values(value: str) -> list[str]:
    """Split a sweep value at the commas outside brackets and quotes: `1,[2,3]` -> ["1", "[2,3]"]."""
    parts, depth, quote, current = [], 0, "", ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [*parts, current]


def expand_sweep(argv: Sequence[str]) -> list[list[str]]:
    """Every combination of the comma lists on the command line, the last key varying fastest."""
    choices = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        choices.append([f"{key}={v}" for v in split_values(value)] if sep else [arg])
    return [list(combo) for combo in itertools.product(*choices)]


def _label(combo: list[str], swept: list[int]) -> str:
    text = ",".join(combo[i] for i in swept)
    return re.sub(r"[^\w.=,+-]", "-", text)[:80]


def sweep(argv: Sequence[str], train: Callable[[DictConfig], dict], print_only: bool = False) -> None:
    """Compose every combination, check them all, then run them in turn; print and write the summary table."""
    base, runs, swept = plan_sweep(argv)
    if print_only:
        for combo, cfg in runs:
            print(f"# {' '.join(combo)}\n{OmegaConf.to_yaml(cfg)}")
        return
    for _, cfg in runs:
        resolve_output_dir(cfg)  # refuses run directories that already hold checkpoints, before any run starts
    rows = []
    for combo, cfg in runs:
        print(f"[sweep] run {len(rows) + 1} of {len(runs)}: {' '.join(combo[i] for i in swept)} -> {cfg.output_dir}")
        try:
            rows.append((combo, cfg.output_dir, train(cfg), ""))
        except UserError as error:  # one failed run (e.g. diverged) does not stop the others
            print(f"error: {error}", file=sys.stderr)
            rows.append((combo, cfg.output_dir, {}, str(error)))
    table = summary_table(rows, swept)
    print(table)
    base.mkdir(parents=True, exist_ok=True)
    (base / "sweep.md").write_text(table + "\n")
    failed = [row for row in rows if row[3]]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} sweep runs failed (see the table above)")


def plan_sweep(argv: Sequence[str]) -> tuple[Path, list[tuple[list[str], DictConfig]], list[int]]:
    """(the sweep's folder, each run's (arguments, composed and checked config), the indices of the swept
    arguments); nothing is written."""
    if any(a.startswith(("ckpt_path=", "output_dir=")) and "," in a.partition("=")[2] for a in argv):
        raise ConfigError("ckpt_path and output_dir cannot be swept; a sweep gives each run its own output_dir")
    if any(a.startswith("ckpt_path=") and a != "ckpt_path=null" for a in argv):
        raise ConfigError("a sweep cannot resume (ckpt_path); resume each run on its own with its ckpt_path")
    given = [a.partition("=")[2] for a in argv if a.startswith("output_dir=")]
    base = Path(given[-1]) if given and given[-1] != "null" else Path("outputs") / datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S_sweep")  # fmt: skip
    argv = [a for a in argv if not a.startswith("output_dir=")]
    combos = expand_sweep(argv)
    swept = [i for i, a in enumerate(argv) if len(split_values(a.partition("=")[2])) > 1]
    runs = []
    for i, combo in enumerate(combos):
        out = base / f"{i}_{_label(combo, swept)}" if swept else base
        cfg = load_config([*combo, f"output_dir={out}"])
        _check_single_process(cfg)
        runs.append((combo, cfg))
    return base, runs, swept


def _check_single_process(cfg: DictConfig) -> None:
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    many = (isinstance(devices, int) and devices > 1) or isinstance(devices, (list, tuple)) or nodes > 1
    if many or "ddp" in str(cfg.trainer.get("strategy", "")):
        raise ConfigError("a sweep runs each of its runs in this one process; launch several-process (DDP) runs "
                          "one by one, e.g. in a shell loop")  # fmt: skip


def summary_table(rows: list[tuple], swept: list[int]) -> str:
    """Markdown: one row per run, its swept values, its test figures (mean ± ci95) and its directory."""
    keys = sorted({k for _, _, metrics, _ in rows for k in metrics if not k.endswith("_ci95") and "_step" not in k})
    head = ["run", *(rows[0][0][i].partition("=")[0] for i in swept), "result", *keys, "output_dir"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, (combo, out, metrics, error) in enumerate(rows):
        values = [combo[i].partition("=")[2] for i in swept]
        figures = [f"{metrics[k]:.4g}" + (f" ± {metrics[k + '_ci95']:.2g}" if k + "_ci95" in metrics else "")
                   if k in metrics else "" for k in keys]  # fmt: skip
        result = f"failed: {error[:70]}" if error else "ok"
        lines.append("| " + " | ".join([str(n), *values, result, *figures, str(out)]) + " |")
    return "\n".join(lines)
