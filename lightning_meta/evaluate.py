"""Meta-test a checkpoint: `python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt [dotted.key=value ...]`.

The learner and the episodes are rebuilt from the config saved in the checkpoint
(`hyper_parameters["config"]`), so with no overrides the test figures equal the ones the training run logged.
Overrides use the training CLI's grammar and validation, e.g. `data.shots=5 data.test_episodes=10000
data.queries=1 algorithm.transductive=false`. Prints one summary line and writes the figures to a JSON file
(`json_path=...`; default `<run>/eval_<checkpoint>_<setting>.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from lightning_meta import cli
from lightning_meta.allocator import keep_freed_memory
from lightning_meta.build import load, run_dir_of, trainer_errors, user_errors
from lightning_meta.config import instantiate
from lightning_meta.errors import ConfigError, DivergenceError
from lightning_meta.metrics import EpisodeMetrics

# eval.py's own keys and their defaults (None: required), beside the overrides of the checkpoint's saved config.
EVAL_KEYS = {"ckpt_path": None, "json_path": None, "allow_nonfinite": False}
USAGE = """usage: python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt [json_path=<file>] [allow_nonfinite=true]
                   [--cfg job] [dotted.key=value ...]

  ckpt_path        a checkpoint written by train.py (its saved config rebuilds the learner and the episodes)
  json_path        where to write the report (default: <run>/eval_<checkpoint>_<setting>.json)
  allow_nonfinite  true: report the mean over the finite episodes when some diverge (default: an error)
  dotted.key=value any key of the saved config, e.g. data.test_episodes=10000 algorithm.eval_inner.steps=50
                   (Hydra's grammar: +key=value adds a key a _target_ accepts, ~key removes one)
  --cfg job        print the checkpoint's config with the overrides and these keys, and exit"""


def figure(metrics: dict[str, float], key: str, task: str) -> str:
    """`key = mean ± ci95`, accuracy in percent (`97.12 ± 0.31 %`), MSE with 4 significant digits."""
    mean, ci = metrics[key], metrics[f"{key}_ci95"]
    if task == "classification":
        return f"{key} = {100 * mean:.2f} ± {100 * ci:.2f} %"
    return f"{key} = {mean:.4g} ± {ci:.2g}"


def describe(datamodule, learner, metrics: dict[str, float]) -> str:
    """One line, e.g. `test/acc = 97.12 ± 0.31 % (600 episodes, 5-way 1-shot, 50 inner steps, transductive)`
    (MSE without the percent sign)."""
    task = datamodule.task
    shape = f"{datamodule.shots}-shot"
    if task == "classification":
        shape = f"{datamodule.ways}-way {shape}"
    mode = "transductive" if learner.transductive else "non-transductive"
    episodes = int(metrics["test/episodes"])
    setting = f"{episodes} episodes, {shape}, {learner.eval_inner.steps} inner steps, {mode}"
    return f"{figure(metrics, f'test/{EpisodeMetrics.metric_name(task)}', task)} ({setting})"


# Keys that cannot change the figures, left out of the default JSON name's hash of the config.
UNHASHED = {"output_dir", "ckpt_path", "logger", "callbacks", "hydra", "data.num_workers", "data.eval_batch_size",
            "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps"}  # fmt: skip


def default_json_path(ckpt_path: str | Path, datamodule, learner) -> Path:
    """`<run>/eval_<checkpoint>_<N>way-<K>shot_<S>steps_<E>ep_<mode>[_<P>px]_seed<seed>_<hash>.json` (<run>:
    checkpoints/'s parent; <P>: the image size of image data; <hash>: 8 hex digits of the evaluated config but the
    keys in `UNHASHED`, so two evaluations that differ in any other setting never share a name)."""
    ckpt = Path(ckpt_path).resolve()
    shape = f"{datamodule.shots}shot"
    if datamodule.task == "classification":
        shape = f"{datamodule.ways}way-{shape}"
    mode = "transductive" if learner.transductive else "nontransductive"
    setting = f"{shape}_{learner.eval_inner.steps}steps_{datamodule.test_episodes}ep_{mode}"
    size = getattr(datamodule, "image_size", None)
    setting += (f"_{size}px" if size else "") + f"_seed{datamodule.seed}"
    config = learner.hparams.get("config") or {}
    kept = {
        f"{group}.{key}" if isinstance(node, dict) else group: value
        for group, node in config.items()
        for key, value in (node.items() if isinstance(node, dict) else [(None, node)])
    }
    kept = {k: v for k, v in kept.items() if k not in UNHASHED and k.partition(".")[0] not in UNHASHED}
    digest = hashlib.blake2b(json.dumps(kept, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
    return run_dir_of(ckpt) / f"eval_{ckpt.stem}_{setting}_{digest}.json"


def protocol(datamodule, learner) -> dict[str, Any]:
    """The settings that define the meta-test figures (what a paper's table would state)."""
    return {
        "split": "test",
        "episodes": datamodule.test_episodes,
        "ways": datamodule.ways,
        "shots": datamodule.shots,
        "queries": datamodule.queries,
        "seed": datamodule.seed,
        "eval_inner": asdict(learner.eval_inner),
        "transductive": learner.transductive,
        "eval_curve_steps": list(learner.eval_curve_steps),
    }


def writable(path: Path) -> Path:
    """`path`, once it is known that a file can be written there (checked before a long evaluation, not after): its
    folder (or the nearest one that exists) must be writable, and a probe file created there (and removed at once)
    must succeed, as `os.access` answers yes to root everywhere, /proc and read-only mounts included."""
    folder = next((p for p in path.resolve().parents if p.exists()), Path("/"))
    if path.is_dir():
        raise ConfigError(f"json_path={path} is a folder; give a file name, e.g. {path / 'eval.json'}")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"json_path={path} cannot be written ({folder} is not a writable folder); give another")
    try:
        if path.is_file():
            with open(path, "r+b"):  # opened for writing, nothing changed
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", suffix=".json"):  # removed on close
                pass
    except OSError as error:
        raise ConfigError(f"json_path={path} cannot be written ({error.strerror or error}); give another, e.g. "
                          "json_path=eval.json") from error  # fmt: skip
    return path


def check_finite(metrics: dict[str, float], allow_nonfinite: bool) -> None:
    bad, total = int(metrics.get("test/nonfinite_episodes", 0)), int(metrics.get("test/episodes", 0))
    if bad and not allow_nonfinite:
        raise DivergenceError(
            f"{bad} of {total} test episodes gave a non-finite loss after adaptation (the inner loop diverged); "
            "lower algorithm.eval_inner.lr or algorithm.eval_inner.steps, or add allow_nonfinite=true to report "
            f"the figures over the {total - bad} finite episodes"
        )


def evaluate(
    ckpt_path: str | Path, overrides: Sequence[str] = (), json_path: str | None = None, allow_nonfinite: bool = False
) -> dict:
    """Meta-test a checkpoint on the held-out split; prints the summary line and writes the JSON (rank 0).
    Episodes whose loss is not finite after adaptation are an error unless `allow_nonfinite` (then the figures
    are over the finite ones, and `test/nonfinite_episodes` counts the others).

    Returns:
        {"summary", "metrics" (test/acc or test/mse, its _ci95, test/episodes, the curve points), "protocol",
        "checkpoint", "overrides", "config"}.
    """
    keep_freed_memory()  # lightning_meta/allocator.py
    cfg, datamodule, learner = load(ckpt_path, overrides)
    if datamodule.test_episodes < 1:
        raise ConfigError(f"data.test_episodes={datamodule.test_episodes}: nothing to evaluate; give 1 or more")
    path = writable(Path(json_path) if json_path else default_json_path(ckpt_path, datamodule, learner))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    root = str(Path(ckpt_path).parent)
    with trainer_errors():
        trainer = instantiate(cfg.trainer, callbacks=[], logger=False, default_root_dir=root)
    with user_errors():
        datamodule.setup("test")  # reads the data now: a missing or corrupt file is a one-line error
    results = trainer.test(learner, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    check_finite(metrics, allow_nonfinite)
    report = {
        "summary": describe(datamodule, learner, metrics),
        "metrics": metrics,
        "protocol": protocol(datamodule, learner),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        write_report(report, path, datamodule.task)
    return report


def write_report(report: dict, path: Path, task: str) -> None:
    """Print the summary line and each point of the adaptation curve; write the report to `path` as JSON (a
    temporary file renamed into place: a failed write leaves no partial file). A write that fails after all (the
    disk filled up, the folder went away) is a one-line error naming the path, after the figures were printed."""
    print(report["summary"])
    for key in report["metrics"]:
        if "_step" in key and not key.endswith("_ci95"):
            print(figure(report["metrics"], key, task))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise ConfigError(f"could not write json_path={path} ({error.strerror or error}); the figures are printed "
                          "above; rerun with json_path=<a writable file> to keep them") from error  # fmt: skip
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python eval.py [--help] [--cfg job] ckpt_path=... [json_path=...] [allow_nonfinite=true] [key=value ...]`."""

    def task(own: dict, overrides: list[str]) -> None:
        if not isinstance(own["allow_nonfinite"], bool):
            raise ConfigError(f"allow_nonfinite={own['allow_nonfinite']}; write allow_nonfinite=true or false")
        evaluate(str(own["ckpt_path"]), overrides, own["json_path"], own["allow_nonfinite"])

    return cli.saved_run_main(argv, "eval", EVAL_KEYS, USAGE, task)
