"""The training entry point behind `python train.py`: config -> datamodule -> model -> callbacks -> logger ->
trainer, then fit and test.

Everything a user can get wrong is checked before the first file is written (`prepare`): the run directory, the
checkpoint to resume and its fit to the config, the constructors' own checks, the data on disk, the Trainer
settings. A failed start therefore leaves no trace; `main` prints its one-line reason and exits with status 2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from lightning_meta import cli, search
from lightning_meta.algorithms.outer import OuterLoop
from lightning_meta.algorithms.scaling import check_trainer
from lightning_meta.allocator import keep_freed_memory
from lightning_meta.build import build, resolve_output_dir, trainer_errors, user_errors
from lightning_meta.callbacks import CheckpointsOfThisRun, LastCheckpoint
from lightning_meta.config import import_target, instantiate, named_nodes
from lightning_meta.errors import ConfigError, DivergenceError
from lightning_meta.loggers import close, finish, hparams_off, log_config, make_loggers
from lightning_meta.metrics import EpisodeMetrics
from lightning_meta.resume import check_resume_config, check_state_fits, read_checkpoint


def callbacks(cfg: DictConfig, out: Path, task: str, validate: bool) -> list[pl.Callback]:
    """The callbacks config's nodes in order (callbacks/default.yaml: best checkpoint, non-finite guard before
    `LastCheckpoint`, so that a non-finite step is stopped before last.ckpt could be rewritten, then the evaluation
    review), with what a node leaves out filled from the run: a ModelCheckpoint's folder <out>/checkpoints, its file
    name and metric (best-<step> by val/acc, or val/mse for regression; step-<step> without validation), an
    EarlyStopping's metric, a LastCheckpoint's path."""
    name = EpisodeMetrics.metric_name(task)
    metric = {"monitor": f"val/{name}", "mode": "max" if name == "acc" else "min"}
    made = []
    for where, node in named_nodes(cfg.get("callbacks"), "callbacks"):
        spec = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}
        target = import_target(spec["_target_"])
        if issubclass(target, ModelCheckpoint):
            fill = {"dirpath": str(out / "checkpoints"), "filename": "step-{step}"}
            fill.update({"filename": "best-{step}", **metric} if validate else {})
        elif issubclass(target, EarlyStopping):
            if not validate and "monitor" not in spec:
                raise ConfigError(f"{where} stops on validation, but data.val_episodes=0 gives none; give "
                                  "data.val_episodes=1 or more, or drop early_stopping from callbacks")  # fmt: skip
            fill = metric
        elif issubclass(target, LastCheckpoint):
            fill = {"path": out / "checkpoints" / "last.ckpt"}
        else:
            fill = {}
        made.append(instantiate({**fill, **spec}))
    return made


class Prepared(NamedTuple):
    out: Path
    datamodule: Any
    learner: pl.LightningModule
    trainer: pl.Trainer
    loggers: list


def check_run(cfg: DictConfig, datamodule, trainer: pl.Trainer) -> None:
    """Settings that pass every constructor but cannot make a run."""
    if trainer.max_steps is None or trainer.max_steps < 1:
        raise ConfigError(f"trainer.max_steps={trainer.max_steps} trains nothing; give the number of "
                          "meta-iterations (1 or more); eval.py evaluates a checkpoint without training")  # fmt: skip
    world = trainer.world_size
    if datamodule.meta_batch_size % world:
        raise ConfigError(
            f"data.meta_batch_size={datamodule.meta_batch_size} does not split evenly over {world} processes "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world}"
        )
    for key in ("queries", "train_queries"):
        value = getattr(datamodule, key, None)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key}={value}: every episode needs query examples to score (the loss and "
                              f"metric are over the queries); give data.{key}=1 or more")  # fmt: skip
    interval = cfg.trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
        raise ConfigError(f"trainer.val_check_interval={interval}; give the meta-iterations between validations "
                          "(1 or more), or data.val_episodes=0 for no validation")  # fmt: skip
    if datamodule.test_episodes < 1:  # eval.py's wording for the same value
        raise ConfigError(f"data.test_episodes={datamodule.test_episodes}: nothing to evaluate; give 1 or more")
    outputs = cfg.model.get("out_features") if "model" in cfg else None
    if datamodule.task == "classification" and isinstance(outputs, int) and datamodule.ways > outputs:
        raise ConfigError(f"data.ways={datamodule.ways} but model.out_features={outputs} gives the network "
                          f"{outputs} outputs, one per class; leave model.out_features at ${{data.ways}} or give "
                          f"model.out_features={datamodule.ways} or more")  # fmt: skip
    targets = getattr(datamodule, "target_features", None)  # regression: the length of one target
    if datamodule.task == "regression" and isinstance(outputs, int) and targets is not None and outputs != targets:
        raise ConfigError(f"model.out_features={outputs} but the data's targets have {targets} value(s) each; "
                          f"give model.out_features={targets}")  # fmt: skip
    for key in ("val_episodes", "test_episodes"):
        episodes = getattr(datamodule, key)
        if 0 < episodes < world:
            raise ConfigError(
                f"data.{key}={episodes} leaves some of the {world} processes (trainer.devices x trainer.num_nodes) "
                f"without an episode; give data.{key}={world} or more (a multiple of {world} splits evenly)"
            )


def prepare(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> Prepared:
    """Everything `train` needs, checked, with nothing written yet."""
    out = resolve_output_dir(cfg)
    ckpt = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    if ckpt is not None:
        requested = OmegaConf.to_container(cfg, resolve=True)
        check_resume_config(requested, ckpt["hyper_parameters"]["config"], cfg.ckpt_path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads") is not None:
        torch.set_num_threads(cfg.threads)
    with user_errors():
        datamodule, learner = build(cfg)
    if ckpt is not None:
        check_state_fits(learner, ckpt, cfg.ckpt_path)
    validate = getattr(datamodule, "val_episodes", 0) > 0
    with trainer_errors():  # a logger refuses its settings as the Trainer does (MisconfigurationException)
        loggers = make_loggers(cfg.get("logger"), out)
    hparams_off(learner, datamodule)  # the loggers get the whole config (log_config), not the algorithm's arguments
    run_callbacks = [*callbacks(cfg, out, datamodule.task, validate), *extra_callbacks]
    run_callbacks += search.trial_callbacks(datamodule.task, validate)  # an Optuna trial's job: report, prune
    if ckpt is not None:  # the best-checkpoint bookkeeping saved in ckpt names files of this run only
        run_callbacks.append(CheckpointsOfThisRun())
    with trainer_errors():
        trainer = instantiate(cfg.trainer, callbacks=run_callbacks, logger=loggers or False, default_root_dir=str(out))
    check_trainer(trainer, learner, cfg.trainer.precision)  # before fit, whose own checks would speak first
    check_run(cfg, datamodule, trainer)
    outer = getattr(learner, "outer", None)
    if isinstance(outer, OuterLoop) and outer.lr_final is not None:
        outer.progress(trainer)  # the annealing's length: anneal_over=time needs trainer.max_time, and no DDP
    with user_errors():
        datamodule.setup("fit")  # reads the data now: a missing or corrupt file is reported before any write
    return Prepared(out, datamodule, learner, trainer, loggers)


def train(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
    """Fit, then meta-test (the best checkpoint by validation when there is one); returns the test metrics and
    writes them to `<output_dir>/test_metrics.json`. `extra_callbacks` join train.py's own.

    A fresh run writes config.yaml (with .hydra/ and the loggers' config) before it trains; a resume writes them
    with its first save of last.ckpt, so that a resume that fails (a diverging step size, a crash) leaves the run's
    config.yaml describing the run that wrote its last.ckpt. A run stopped by Ctrl-C or SIGTERM returns {} (the
    command line then exits with 130 or 143)."""
    keep_freed_memory()  # lightning_meta/allocator.py: no page faults on every large tensor (CPU)
    out, datamodule, learner, trainer, loggers = prepare(cfg, extra_callbacks)

    def write_config() -> None:
        if trainer.is_global_zero:
            OmegaConf.save(learner.hparams["config"], out / "config.yaml")
            cli.write_rerun_files(out)
            log_config(loggers, learner.hparams["config"], out / "config.yaml")

    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
    keeper = next((cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)), None)
    if not cfg.ckpt_path:
        write_config()
    elif keeper is not None:
        keeper.when_saved(write_config)
    trainer.fit(learner, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if cfg.ckpt_path and keeper is None and not trainer.interrupted:
        write_config()  # no last.ckpt to wait for: once the resumed training went through
    if trainer.interrupted or LastCheckpoint.stopped_on_request(trainer):
        close(loggers, "failed" if trainer.interrupted else "success")
        if keeper is not None:
            keeper.release()  # the signal handlers stayed to ignore a repeated Ctrl-C while the run wound down
        return {}
    return meta_test(out, datamodule, learner, trainer, loggers)


def meta_test(out: Path, datamodule, learner: pl.LightningModule, trainer: pl.Trainer, loggers: list) -> dict:
    """Test the best checkpoint by validation (else the last weights), write test_metrics.json, give the loggers
    their end-of-run record and close them; the metrics, with `val/best` (the best validation score, a search's
    objective) when there was validation. Non-finite test episodes are a `DivergenceError` after the writes."""
    best = trainer.checkpoint_callback.best_model_path if datamodule.val_episodes > 0 else ""
    results = trainer.test(learner, datamodule=datamodule, ckpt_path=best or None, verbose=True)
    metrics = results[0] if results else {}
    if trainer.is_global_zero:
        (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    # TensorBoard's HParams tab compares runs by their config against the test metrics; then every logger is closed
    finish(loggers, learner.hparams["config"], metrics, step=trainer.global_step)
    bad = int(metrics.get("test/nonfinite_episodes", 0))
    if bad:
        raise DivergenceError(
            f"{bad} of {int(metrics['test/episodes'])} test episodes gave a non-finite loss after adaptation "
            f"(figures in {out / 'test_metrics.json'} are over the finite ones); the checkpoints are kept: "
            "re-evaluate with eval.py and a lower algorithm.eval_inner.lr or fewer algorithm.eval_inner.steps"
        )
    if best and trainer.checkpoint_callback.best_model_score is not None:
        metrics["val/best"] = float(trainer.checkpoint_callback.best_model_score)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """`python train.py [--help] [--cfg] [-m] [group=name ...] [dotted.key=value ...]`; returns the exit status."""
    return cli.main(argv, train)
