"""Reading a checkpoint, and checking it against the config a run asks for, before anything is written.

A resume may change what does not shape the saved state (the trainer's devices, the logger, validation cadence,
step counts); it may not change what the saved tensors or optimizer state depend on: the group members, the
model, the number of classes, the algorithm's class and outer optimizer, or whether the learning rate is annealed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lightning_meta.errors import CheckpointError

# Config keys a resumed run must keep: the saved weights, optimizer state and scheduler depend on them.
FIXED_KEYS = ("data._target_", "data.ways", "algorithm._target_", "algorithm.outer.optimizer")
FIXED_GROUPS = ("algorithm", "data", "model")


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint, loaded with `weights_only=True`; a clear error when it is missing, foreign or corrupt."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist or is not a file; give e.g. "
                              "<run>/checkpoints/last.ckpt")  # fmt: skip
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or pickled objects other than plain containers
        raise CheckpointError(
            f"ckpt_path={ckpt_path} is not a checkpoint train.py can read ({type(error).__name__}: the file is "
            "truncated, corrupt or of another kind); give a .ckpt file written by train.py, e.g. "
            "<run>/checkpoints/last.ckpt"
        ) from error
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{ckpt_path} has no saved run config (hyper_parameters['config']); only checkpoints written by "
            "train.py carry one: build the learner yourself and load_state_dict(checkpoint['state_dict'])"
        )
    return ckpt


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def check_resume_config(requested: dict, saved: dict, ckpt_path: str) -> None:
    """Refuse a resume whose config changes a group member or a key the saved state depends on, naming it."""
    asked, had = requested.get("selection", {}), saved.get("selection", {})
    for group in FIXED_GROUPS:
        if had.get(group) and asked.get(group) != had.get(group):
            raise CheckpointError(
                f"{ckpt_path} was trained with {group}={had[group]}, but this run selects {group}="
                f"{asked.get(group)}; add {group}={had[group]} to the command line, or start a fresh run "
                "(without ckpt_path) in another output_dir"
            )
    new, old = _flat(requested), _flat(saved)
    changed = [k for k in old if (k.startswith("model.") or k in FIXED_KEYS) and new.get(k) != old[k]]
    annealed = "algorithm.outer.lr_final"
    if (new.get(annealed) is None) != (old.get(annealed) is None):
        changed.append(annealed)
    if changed:
        key = changed[0]
        now, then = (json.dumps(d.get(key)) for d in (new, old))
        raise CheckpointError(
            f"{key}={now} does not fit {ckpt_path}, which was trained with {key}={then}; "
            f"drop that override to resume (the saved weights and optimizer state depend on it), or start a "
            "fresh run in another output_dir"
        )


def check_state_fits(learner: torch.nn.Module, ckpt: dict, ckpt_path: str) -> None:
    """Every saved tensor has a place of the same shape in the learner built from the config, and vice versa."""
    own = learner.state_dict()
    saved = ckpt["state_dict"]
    for key in sorted(set(own) | set(saved)):
        if key not in own or key not in saved or tuple(own[key].shape) != tuple(saved[key].shape):
            shapes = [tuple(d[key].shape) if key in d else "nothing" for d in (saved, own)]
            raise CheckpointError(
                f"the weights in {ckpt_path} do not fit the model this config builds ({key}: {shapes[0]} saved, "
                f"{shapes[1]} built); drop the model.* / data.ways overrides"
            )
