"""From a config to objects: the run directory, the (datamodule, learner) pair, a trained learner from a checkpoint.

The layer below the entry points (`run`, `evaluate`, `cli`) and above `config`, `data` and `resume`. It reaches the
algorithms and models only through the `_target_` of a config node, never by import, so that
`MetaLearner.load_from_checkpoint` can call `load_learner` without an import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_meta.config import default_run_dir, instantiate, override_config, raised_in, run_dir_of
from lightning_meta.data import fit_model_input
from lightning_meta.errors import CheckpointError, ConfigError, DataError, UserError
from lightning_meta.resume import check_state_fits, read_checkpoint

# Appended to Lightning's own Trainer errors, which name the argument but not where to change it.
TRAINER_HINT = " (from the trainer.* settings; trainer.accelerator=auto and trainer.devices=1 fit any machine)"
# Lightning's own packages: a ValueError or TypeError raised in their code while the Trainer is built is one of
# its argument checks (e.g. an unknown accelerator or strategy name).
LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning_fabric", "lightning")
# The model's input arguments, which follow the data (`fit_model_input`), never an override.
INPUT_KEYS = ("in_channels", "image_size", "in_features")


# What a run writes into its directory (config.yaml and .hydra/ first, once its checks pass): a fresh run refuses an
# output_dir holding any of them, or checkpoints, as another run's files it would overwrite or mix with its own.
RUN_FILES = ("config.yaml", ".hydra", "test_metrics.json", "tensorboard", "csv", "wandb")
PACKAGE_DIR = Path(__file__).resolve().parent  # the installed lightning_meta: never a run directory


def _first_process() -> bool:
    """Not a process Lightning's DDP launcher (or a scheduler) started for another rank: those find the files their
    rank 0 wrote a moment before, and only rank 0 checks the folder."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")


def resolve_output_dir(cfg: DictConfig) -> Path:
    """The run directory: output_dir, else the resumed checkpoint's run. Refuses a run directory inside the
    installed package (a resume of a checkpoint shipped with it names output_dir), a fresh run over another run's
    files (`RUN_FILES` or checkpoints), and a resume into a directory other than the checkpoint's run that holds
    another run's files."""
    ckpt = Path(cfg.ckpt_path).resolve() if cfg.ckpt_path else None
    out = Path(default_run_dir(cfg.output_dir, cfg.ckpt_path))
    if out.resolve().is_relative_to(PACKAGE_DIR):
        if ckpt is None or out.resolve() != run_dir_of(ckpt).resolve():  # not the resume's default
            raise ConfigError(f"output_dir={cfg.output_dir} is inside the installed package lightning_meta "
                              f"({PACKAGE_DIR}); give a folder outside it, e.g. output_dir=outputs/run")  # fmt: skip
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} ships with the package lightning_meta, whose folder cannot be a run "
            "directory; give output_dir=<a new folder> to train on from it, e.g. output_dir=outputs/finetuned"
        )
    held = sorted((out / "checkpoints").glob("*.ckpt"))
    if held and ckpt is None:
        raise ConfigError(
            f"{out} already holds checkpoints; resume with ckpt_path={out / 'checkpoints' / 'last.ckpt'} "
            "or choose another output_dir"
        )
    if held and ckpt.parent != (out / "checkpoints").resolve():
        raise ConfigError(
            f"output_dir={out} holds another run's checkpoints ({held[0].name}), which resuming from "
            f"{cfg.ckpt_path} would overwrite; leave output_dir out to resume into {run_dir_of(ckpt)}, or give an "
            "empty output_dir"
        )
    own_run = ckpt is not None and out.resolve() == run_dir_of(ckpt).resolve()
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not own_run and _first_process():
        what = "resuming from " + str(cfg.ckpt_path) if ckpt is not None else "this run"
        raise ConfigError(
            f"output_dir={out} holds another run's files ({', '.join(found)}), which {what} would overwrite or mix "
            "with its own; choose another output_dir, or remove them"
        )
    return out


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextmanager
def user_errors() -> Iterator[None]:
    """Around building the learner and reading the data. Constructors and data readers raise a `UserError` where
    they check an input; it passes as it is. An OSError about a file (its `filename` set: a path the config names,
    such as one under data.root) becomes a `DataError`. Every other exception is a bug, of this project or of a
    library, and keeps its traceback."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise
        raise DataError(f"{error.filename}: {error.strerror or _first_line(error)}; check the path the config "
                        "gives (e.g. data.root) and its permissions") from error  # fmt: skip


@contextmanager
def trainer_errors() -> Iterator[None]:
    """Around `Trainer(...)`: Lightning checks its arguments with MisconfigurationException, and with ValueError or
    TypeError raised in its own code; those are trainer.* mistakes and become a `ConfigError` ending in
    `TRAINER_HINT`. Anything else (an error inside torch, say) keeps its traceback."""
    try:
        yield
    except UserError:
        raise
    except MisconfigurationException as error:
        raise ConfigError(f"{_first_line(error)}{TRAINER_HINT}") from error
    except (ValueError, TypeError) as error:
        if not raised_in(error, LIGHTNING_PACKAGES):
            raise
        raise ConfigError(f"{_first_line(error)}{TRAINER_HINT}") from error


def build(cfg: DictConfig):
    """Instantiate (datamodule, learner) from a composed config; the learner carries the config as hparams."""
    datamodule = instantiate(cfg.data)
    fit_model_input(cfg.model, datamodule.input_shape())  # the network's input layer follows the data
    backbone = instantiate(cfg.model)
    learner = instantiate(cfg.algorithm, backbone=backbone, task=datamodule.task)
    learner.hparams["config"] = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, learner


def load(ckpt_path: str | Path, overrides: Sequence[str] = ()) -> tuple[DictConfig, Any, Any]:
    """(config, datamodule, learner) of a checkpoint, the config overridden, the learner holding the trained
    meta-weights in eval mode. The datamodule is not set up (no data is read)."""
    ckpt = read_checkpoint(ckpt_path)
    cfg = override_config(ckpt["hyper_parameters"]["config"], overrides)
    asked = {key: cfg.model[key] for key in INPUT_KEYS if any(o.lstrip("+").startswith(f"model.{key}=")
                                                              for o in overrides)}  # fmt: skip
    with user_errors():
        datamodule, learner = build(cfg)
    for key, value in asked.items():
        if cfg.model[key] != value:
            raise ConfigError(f"model.{key}={value} has no effect: the network's input follows the data "
                              f"(model.{key}={cfg.model[key]} here); drop the override")  # fmt: skip
    out_features = cfg.model.get("out_features")
    if datamodule.task == "classification" and out_features is not None and datamodule.ways > out_features:
        raise CheckpointError(
            f"data.ways={datamodule.ways} but the checkpoint's network has {out_features} outputs; evaluate "
            f"with data.ways<={out_features} or meta-train a {datamodule.ways}-way model"
        )
    check_state_fits(learner, ckpt, str(ckpt_path))
    learner.load_state_dict(ckpt["state_dict"])
    return cfg, datamodule, learner.eval()


def load_learner(ckpt_path: str | Path, overrides: Sequence[str] = ()):
    """A trained learner from a train.py checkpoint, ready for `learner.adapt(support_x, support_y)`.

    Example:
        learner = load_learner("outputs/run/checkpoints/last.ckpt", ["algorithm.eval_inner.steps=50"])
        predictor = learner.adapt(support_x, support_y)  # meta-weights untouched
        labels = predictor.classify(query_x)
    """
    return load(ckpt_path, overrides)[2]
