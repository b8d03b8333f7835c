"""Meta-test a checkpoint: `python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt [dotted.key=value ...]`.

The learner and the episodes are rebuilt from the config saved in the checkpoint
(`hyper_parameters["config"]`), so with no overrides the test figures equal the ones the training run logged.
Overrides use the training CLI's grammar and validation, e.g. `data.shots=5 data.test_episodes=10000
data.queries=1 algorithm.transductive=false`. Prints one summary line and writes the figures to a JSON file
(`json_path=...`; default `<run>/eval_<checkpoint>_<setting>.json`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_meta.config import ConfigError, instantiate, override_config
from lightning_meta.metrics import EpisodeMetrics
from lightning_meta.run import build

EVAL_KEYS = ("ckpt_path", "json_path")  # arguments of eval.py itself, not config keys


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint, loaded with `weights_only=True`; a clear error when it is missing or foreign."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist; give e.g. <run>/checkpoints/last.ckpt")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt.get("hyper_parameters", {}).get("config"), dict):
        raise ConfigError(
            f"{ckpt_path} has no saved run config (hyper_parameters['config']); only checkpoints written by "
            "train.py carry one: build the learner yourself and load_state_dict(checkpoint['state_dict'])"
        )
    return ckpt


def load(ckpt_path: str | Path, overrides: Sequence[str] = ()) -> tuple[DictConfig, Any, Any]:
    """(config, datamodule, learner) of a checkpoint, the config overridden, the learner holding the trained
    meta-weights in eval mode. The datamodule is not set up (no data is read)."""
    ckpt = read_checkpoint(ckpt_path)
    cfg = override_config(ckpt["hyper_parameters"]["config"], overrides)
    datamodule, learner = build(cfg)
    out_features = cfg.model.get("out_features")
    if datamodule.task == "classification" and out_features is not None and datamodule.ways > out_features:
        raise ConfigError(
            f"data.ways={datamodule.ways} but the checkpoint's network has {out_features} outputs; evaluate "
            f"with data.ways<={out_features} or meta-train a {datamodule.ways}-way model"
        )
    try:
        learner.load_state_dict(ckpt["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"the checkpoint's weights do not fit the model built from the config; "
                          f"do not override model.* keys ({error})") from error  # fmt: skip
    return cfg, datamodule, learner.eval()


def load_learner(ckpt_path: str | Path, overrides: Sequence[str] = ()):
    """A trained learner from a train.py checkpoint, ready for `learner.adapt(support_x, support_y)`.

    Example:
        learner = load_learner("outputs/run/checkpoints/last.ckpt", ["algorithm.eval_inner_steps=50"])
        predictor = learner.adapt(support_x, support_y)  # meta-weights untouched
        labels = predictor.classify(query_x)
    """
    return load(ckpt_path, overrides)[2]


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
    setting = f"{episodes} episodes, {shape}, {learner.eval_inner_steps} inner steps, {mode}"
    return f"{figure(metrics, f'test/{EpisodeMetrics.metric_name(task)}', task)} ({setting})"


def default_json_path(ckpt_path: str | Path, datamodule, learner) -> Path:
    """`<run>/eval_<checkpoint>_<N>way-<K>shot_<S>steps_<E>ep_<mode>.json` (<run>: checkpoints/'s parent)."""
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    shape = f"{datamodule.shots}shot"
    if datamodule.task == "classification":
        shape = f"{datamodule.ways}way-{shape}"
    mode = "transductive" if learner.transductive else "nontransductive"
    setting = f"{shape}_{learner.eval_inner_steps}steps_{datamodule.test_episodes}ep_{mode}"
    return run / f"eval_{ckpt.stem}_{setting}.json"


def protocol(datamodule, learner) -> dict[str, Any]:
    """The settings that define the meta-test figures (what a paper's table would state)."""
    return {
        "split": "test",
        "episodes": datamodule.test_episodes,
        "ways": datamodule.ways,
        "shots": datamodule.shots,
        "queries": datamodule.queries,
        "seed": datamodule.seed,
        "eval_inner_steps": learner.eval_inner_steps,
        "eval_inner_lr": learner.eval_inner_lr,
        "transductive": learner.transductive,
        "eval_curve_steps": list(learner.eval_curve_steps),
    }


def evaluate(ckpt_path: str | Path, overrides: Sequence[str] = (), json_path: str | None = None) -> dict:
    """Meta-test a checkpoint on the held-out split; prints the summary line and writes the JSON (rank 0).

    Returns:
        {"summary", "metrics" (test/acc or test/mse, its _ci95, test/episodes, the curve points), "protocol",
        "checkpoint", "overrides", "config"}.
    """
    cfg, datamodule, learner = load(ckpt_path, overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    root = str(Path(ckpt_path).parent)
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False, default_root_dir=root)
    results = trainer.test(learner, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    report = {
        "summary": describe(datamodule, learner, metrics),
        "metrics": metrics,
        "protocol": protocol(datamodule, learner),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        print(report["summary"])
        for key in metrics:
            if "_step" in key and not key.endswith("_ci95"):
                print(figure(metrics, key, datamodule.task))
        path = Path(json_path) if json_path else default_json_path(ckpt_path, datamodule, learner)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return report


def parse_eval_argv(argv: Sequence[str]) -> tuple[str, str | None, list[str]]:
    """(ckpt_path, json_path, overrides) from `ckpt_path=... [json_path=...] [dotted.key=value ...]`."""
    own, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in EVAL_KEYS:
            own[key] = value
        else:
            overrides.append(arg)
    if not own.get("ckpt_path"):
        raise ConfigError("give the checkpoint to evaluate: eval.py ckpt_path=<run>/checkpoints/<name>.ckpt")
    return own["ckpt_path"], own.get("json_path"), overrides


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ckpt_path, json_path, overrides = parse_eval_argv(sys.argv[1:] if argv is None else argv)
        evaluate(ckpt_path, overrides, json_path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
