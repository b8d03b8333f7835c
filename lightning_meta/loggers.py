"""Experiment tracking for every logger: build the loggers a config names, give each the run's config, the review's
figures and the end-of-run record, and close them so that everything is on disk when `train()` returns.

Each logger is spoken to in its own terms: TensorBoard takes scalars, images and the HParams record; CSV scalars and
hparams.yaml; MLflow params, metrics and artifacts in a tracking store shared by runs; W&B config, metrics, media and
artifacts. Scalars reach every logger through Lightning (`self.log` in the learner). Only rank 0 logs.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lightning_meta.config import FILLED, import_target, instantiate, named_nodes, signature_params

# Loggers whose store is shared by runs (a tracking database or server): where they write comes from the config
# (tracking_uri), never from the run directory.
SHARED_STORE = (MLFlowLogger,)
# Loggers that take images: the review's figures go to these.
TAKES_FIGURES = (TensorBoardLogger, MLFlowLogger, WandbLogger)


def make_loggers(node: Any, out: Path) -> list[Logger]:
    """The loggers of the `logger` config node: none for null or `_target_: null`, one for a `_target_` node, one per
    entry of a mapping of names to `_target_` nodes (`logger=many`). A logger whose constructor takes a folder
    (`save_dir`, or Fabric's `root_dir`) and whose node leaves it out writes into the run directory `out`; a logger
    with a shared store (MLflow) keeps the store its node names."""
    loggers = []
    for _, child in named_nodes(node, "logger"):
        target = import_target(child._target_)
        params = signature_params(target)
        shared = inspect.isclass(target) and issubclass(target, SHARED_STORE)
        folder = next((key for key in FILLED["logger"] if key in params), None)  # save_dir before root_dir
        filled = {folder: str(out)} if folder and folder not in child and not shared else {}
        loggers.append(instantiate(child, **filled))
    return loggers


def hparams_off(*modules: Any) -> None:
    """Stop Lightning from logging the modules' constructor arguments as the run's hyperparameters when fit and test
    start (MLflow got the algorithm's arguments instead of the config): `log_config` logs the whole config instead.
    The checkpoints still hold the arguments."""
    for module in modules:
        module._log_hyperparams = False


def flatten(config: Mapping, separator: str = ".") -> dict[str, Any]:
    """`{"algorithm": {"inner": {"lr": 0.4}}}` -> `{"algorithm.inner.lr": 0.4}`; lists stay values."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update({f"{key}{separator}{k}": v for k, v in flatten(value, separator).items()})
        else:
            flat[str(key)] = value
    return flat


def param_text(value: Any) -> str:
    """A config value as the command line writes it: strings bare, everything else as JSON (`null`, `true`,
    `[8, 8]`)."""
    return value if isinstance(value, str) else json.dumps(value)


def _plain(config: Any) -> dict:
    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)


def _mlflow_config(logger: MLFlowLogger, config: dict, labels: list[str]) -> None:
    """Params under the override keys (`data.ways`, `algorithm.inner.lr`), in batches of MLflow's size limit, each
    value cut to MLflow's length limit (config.yaml holds them whole); the run's labels as tags."""
    from mlflow.entities import Param, RunTag
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    params = [Param(key, param_text(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in flatten(config).items()]
    for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        logger.experiment.log_batch(logger.run_id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
    if labels:
        logger.experiment.log_batch(logger.run_id, tags=[RunTag(label, "") for label in labels])


@rank_zero_only
def log_config(loggers: Iterable[Logger], config: Mapping, config_file: Path | None = None) -> None:
    """Give every logger the run's full resolved config as its parameters, at the start of the run: MLflow as params
    with dotted keys, W&B as its nested run config, TensorBoard and CSV into hparams.yaml (TensorBoard's HParams
    record waits for the test metrics: `finish`). `config_file` (config.yaml) becomes an artifact of the loggers that
    keep files (MLflow, W&B); the top-level `tags` labels become MLflow and W&B tags."""
    config = _plain(config)
    labels = [str(label) for label in config.get("tags") or []]
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _mlflow_config(logger, config, labels)
            if config_file is not None:
                logger.experiment.log_artifact(logger.run_id, str(config_file))
            continue
        logger.log_hyperparams(config)
        if isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment
            if labels:
                run.tags = (*run.tags, *(label for label in labels if label not in run.tags))
            if config_file is not None:  # not run.save: the run's files hold W&B's own config.yaml
                artifact = wandb.Artifact(f"run-{run.id}-config", type="config")
                artifact.add_file(str(config_file))
                run.log_artifact(artifact)


def render(figure: Any) -> np.ndarray:
    """Draw a matplotlib figure off-screen (Agg canvas: no pyplot, no display). Shapes: -> (H, W, 3) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_loggers(loggers: Iterable[Logger]) -> list[Logger]:
    """The loggers that take images (TensorBoard, MLflow, W&B; not CSV)."""
    return [logger for logger in loggers if isinstance(logger, TAKES_FIGURES)]


@rank_zero_only
def log_figure(loggers: Iterable[Logger], tag: str, figure: Any, step: int) -> None:
    """Log a matplotlib figure or an RGB image (H, W, 3) uint8 to every logger that takes images: TensorBoard as an
    image under `tag` (its step slider walks through them), MLflow as the artifact `<tag>/step_<step>.png`, W&B as
    media under `tag` at `trainer/global_step` = `step`."""
    image = figure if isinstance(figure, np.ndarray) else render(figure)
    for logger in figure_loggers(loggers):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, image, artifact_file=f"{tag}/step_{step:06d}.png")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=step)


@rank_zero_only
def close(loggers: Iterable[Logger], status: str = "success") -> None:
    """Flush and close every logger, so that what it was given is on disk (or sent) on return: `save`, then
    `finalize(status)` (TensorBoard closes its writer, MLflow ends the run as FINISHED or FAILED), then W&B's
    `finish` (its finalize leaves the run open)."""
    for logger in loggers:
        logger.save()
        logger.finalize(status)
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


@rank_zero_only
def finish(loggers: Iterable[Logger], config: Mapping, metrics: Mapping[str, float], step: int) -> None:
    """The end-of-run record, after `trainer.test`: TensorBoard's HParams record (the config flattened to
    `algorithm/inner/lr`, ... against the test metrics, which it logs again as scalars at `step`, where the HParams
    tab reads them), then `close`. The other loggers already hold the test metrics, logged by the test loop.

    The order matters: Lightning finalizes every logger at the end of fit and of test, and TensorBoard's finalize
    closes its writer; the HParams record opens a new one, which only the `close` here writes to disk."""
    loggers = list(loggers)
    config = _plain(config)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and metrics:
            logger.log_hyperparams(config, dict(metrics), step=step)
    close(loggers)
