"""The training entry point behind `python train.py`: config -> datamodule -> model -> callbacks -> logger ->
trainer, then fit and test."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_meta.callbacks import GracefulStop
from lightning_meta.config import ConfigError, instantiate, load_config
from lightning_meta.metrics import EpisodeMetrics


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
    if validate:
        best = ModelCheckpoint(
            dirpath=ckpt_dir, filename="best-{step}", monitor=f"val/{name}", mode="max" if name == "acc" else "min",
            save_top_k=1, save_last=True, auto_insert_metric_name=False,
        )  # fmt: skip
    else:
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", save_top_k=1, save_last=True)
    return [best, GracefulStop(ckpt_dir / "last.ckpt")]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then meta-test (the best checkpoint by validation when there is one); returns the test metrics."""
    out = resolve_output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, learner = build(cfg)
    validate = getattr(datamodule, "val_episodes", 0) > 0
    logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks(out, datamodule.task, validate), logger=logger, default_root_dir=str(out)
    )
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(learner.hparams["config"], out / "config.yaml")
    trainer.fit(learner, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if trainer.interrupted:
        return {}
    best = trainer.checkpoint_callback.best_model_path if validate else ""
    results = trainer.test(learner, datamodule=datamodule, ckpt_path=best or None, verbose=True)
    metrics = results[0] if results else {}
    logger.log_hyperparams(learner.hparams, metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
        train(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
