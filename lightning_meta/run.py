"""The training entry point behind `python train.py`: config -> datamodule -> model -> callbacks -> logger ->
trainer, then fit and test."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_meta.algorithms.scaling import check_trainer
from lightning_meta.callbacks import GracefulStop
from lightning_meta.config import ConfigError, instantiate, load_config
from lightning_meta.metrics import EpisodeMetrics
from lightning_meta.review import EvaluationReview


def resolve_output_dir(cfg: DictConfig) -> Path:
    """The run directory; refuses to start a fresh run over another run's checkpoints."""
    if cfg.output_dir:
        out = Path(cfg.output_dir)
    elif cfg.ckpt_path:
        out = Path(cfg.ckpt_path).resolve().parent.parent
    else:
        out = Path("outputs") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if cfg.ckpt_path:
        if not Path(cfg.ckpt_path).is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist; give the path of a .ckpt file")
    elif any((out / "checkpoints").glob("*.ckpt")):
        raise ConfigError(
            f"{out} already holds checkpoints; resume with ckpt_path={out / 'checkpoints' / 'last.ckpt'} "
            "or choose another output_dir"
        )
    return out


def build(cfg: DictConfig):
    """Instantiate (datamodule, learner) from a composed config; the learner carries the config as hparams."""
    datamodule = instantiate(cfg.data)
    backbone = instantiate(cfg.model)
    learner = instantiate(cfg.algorithm, backbone=backbone, task=datamodule.task)
    learner.hparams["config"] = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, learner


def callbacks(out: Path, task: str, validate: bool) -> list[pl.Callback]:
    ckpt_dir = out / "checkpoints"
    name = EpisodeMetrics.metric_name(task)
    # enable_version_counter=False: last.ckpt is overwritten, never left behind for a last-v1.ckpt (GracefulStop
    # writes last.ckpt too, and a resumed run finds the file already there).
    if validate:
        best = ModelCheckpoint(
            dirpath=ckpt_dir, filename="best-{step}", monitor=f"val/{name}", mode="max" if name == "acc" else "min",
            save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
        )  # fmt: skip
    else:
        best = ModelCheckpoint(
            dirpath=ckpt_dir, filename="step-{step}", save_top_k=1, save_last=True, enable_version_counter=False
        )
    return [best, GracefulStop(ckpt_dir / "last.ckpt"), EvaluationReview()]


def train(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
    """Fit, then meta-test (the best checkpoint by validation when there is one); returns the test metrics and
    writes them to `<output_dir>/test_metrics.json`. `extra_callbacks` join train.py's own."""
    out = resolve_output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, learner = build(cfg)
    validate = getattr(datamodule, "val_episodes", 0) > 0
    logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
    run_callbacks = [*callbacks(out, datamodule.task, validate), *extra_callbacks]
    trainer = instantiate(cfg.trainer, callbacks=run_callbacks, logger=logger, default_root_dir=str(out))
    check_trainer(trainer, learner, cfg.trainer.precision)  # before fit, whose own checks would speak first
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(learner.hparams["config"], out / "config.yaml")
    trainer.fit(learner, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if trainer.interrupted or GracefulStop.stopped_on_request(trainer):
        return {}
    best = trainer.checkpoint_callback.best_model_path if validate else ""
    results = trainer.test(learner, datamodule=datamodule, ckpt_path=best or None, verbose=True)
    metrics = results[0] if results else {}
    if trainer.is_global_zero:
        (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    # The HParams tab compares runs by their config, flattened to algorithm/inner_lr, data/ways, ...
    logger.log_hyperparams(learner.hparams["config"], metrics, step=trainer.global_step)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
        train(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
