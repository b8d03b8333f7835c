"""Every read or write of a private attribute of Lightning's Trainer, loops or LightningModule, in one place.

Each function names the attribute it touches and why no public API gives the same; tests/test_compat.py checks each
one on a real Trainer, so a Lightning release that renames or changes one of them fails there, by name, rather than
somewhere inside a training run. The rest of the package calls these functions and touches no private attribute.
"""

from __future__ import annotations

import pytorch_lightning as pl


def should_update_logs(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes this training step's on-step logs (`trainer._logger_connector.should_update_logs`).

    The rule is Lightning's own: every `trainer.log_every_n_steps` training batches, counted by the fit loop's own
    counter (not `trainer.global_step`, which counts optimizer steps), and on the step the run stops. No public
    property gives it, and a copy of the rule here would drift from the one that decides which values are written.
    """
    return bool(trainer._logger_connector.should_update_logs)


def validation_due(trainer: pl.Trainer) -> bool:
    """Whether the fit loop will validate after the current training batch, read in `on_train_batch_end`
    (`trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)`).

    Lightning decides from `val_check_interval`, `check_val_every_n_epoch`, the time-based interval and whether
    this is the epoch's last batch; no public method exposes that decision.
    """
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


def skip_next_validation(trainer: pl.Trainer, skip: bool = True) -> None:
    """Tell the fit loop to leave out (or not) the validation after the current training batch
    (`trainer.fit_loop.epoch_loop._skip_next_val`, which Lightning clears once it has skipped).

    Setting `trainer.should_stop` makes Lightning validate before it stops; there is no public switch to stop
    without that validation. The flag is the one Lightning itself sets to skip a validation already run before a
    checkpoint was saved.
    """
    trainer.fit_loop.epoch_loop._skip_next_val = skip


def uses_distributed_sampler(trainer: pl.Trainer) -> bool:
    """The Trainer's `use_distributed_sampler` argument (`trainer._accelerator_connector.use_distributed_sampler`).

    The Trainer keeps that argument only on its accelerator connector; it has no public property for it.
    """
    return bool(trainer._accelerator_connector.use_distributed_sampler)


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The Trainer `module` is attached to, or None outside one (`module._trainer`).

    The public `module.trainer` raises a RuntimeError when no Trainer is attached (and under Fabric returns a
    stand-in that lacks the Trainer's loops and plugins); code that runs both inside and outside a Trainer needs
    the None.
    """
    return module._trainer
