"""Each private Lightning attribute that lightning_meta/compat.py reads, checked on a real Trainer: it must exist
under its name, and the compat function must give Lightning's own answer at a known step. A Lightning release that
renames or changes one fails here, naming the attribute."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_meta import compat

RENAMED = "Lightning no longer has {}; update lightning_meta/compat.py to the installed Lightning's attribute"


class Boring(pl.LightningModule):
    """A linear layer on random data; `seen` records `probe(self)` at every training step."""

    def __init__(self, probe=None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.probe = probe
        self.seen: list = []

    def training_step(self, batch, batch_idx):
        if self.probe is not None:
            self.seen.append(self.probe(self))
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)


class Validations(pl.Callback):
    """Records `validation_due` after every training batch (where LastCheckpoint reads it), the batches after which
    validation ran, and calls `skip_next_validation` after the batches listed in `skip`."""

    def __init__(self, skip: tuple[int, ...] = ()) -> None:
        self.skip, self.due, self.validated = skip, [], []
        self._batch = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch = batch_idx
        self.due.append(compat.validation_due(trainer))
        if batch_idx in self.skip:
            compat.skip_next_validation(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validated.append(self._batch)


def fit(module: pl.LightningModule, tmp_path, callbacks=(), **trainer_args) -> pl.Trainer:
    settings = dict(
        accelerator="cpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer = pl.Trainer(**{**settings, **trainer_args}, callbacks=list(callbacks))
    trainer.fit(module)
    return trainer


def test_should_update_logs_follows_log_every_n_steps(tmp_path):
    trainer = pl.Trainer(logger=False, log_every_n_steps=2)
    assert hasattr(trainer, "_logger_connector"), RENAMED.format("Trainer._logger_connector")
    assert hasattr(type(trainer._logger_connector), "should_update_logs"), RENAMED.format(
        "_LoggerConnector.should_update_logs"
    )
    every_second = Boring(probe=lambda module: compat.should_update_logs(module.trainer))
    fit(every_second, tmp_path, log_every_n_steps=2, limit_val_batches=0)
    assert every_second.seen == [False, True, False, True, False, True]  # steps 1 to 6: written on 2, 4 and 6
    every_step = Boring(probe=lambda module: compat.should_update_logs(module.trainer))
    fit(every_step, tmp_path, log_every_n_steps=1, limit_val_batches=0)
    assert every_step.seen == [True] * 6


def test_validation_due_is_lightnings_decision(tmp_path):
    trainer = pl.Trainer(logger=False)
    assert hasattr(trainer.fit_loop.epoch_loop, "_should_check_val_fx"), RENAMED.format(
        "_TrainingEpochLoop._should_check_val_fx"
    )
    assert hasattr(trainer.fit_loop, "_data_fetcher"), RENAMED.format("_FitLoop._data_fetcher")
    record = Validations()
    fit(Boring(), tmp_path, callbacks=[record], val_check_interval=2, check_val_every_n_epoch=None)
    assert record.due == [False, True, False, True, False, True]
    assert record.validated == [1, 3, 5]  # after exactly the batches it called due


def test_skip_next_validation_leaves_out_one_validation(tmp_path):
    trainer = pl.Trainer(logger=False)
    assert trainer.fit_loop.epoch_loop._skip_next_val is False, RENAMED.format("_TrainingEpochLoop._skip_next_val")
    record = Validations(skip=(3,))
    trainer = fit(Boring(), tmp_path, callbacks=[record], val_check_interval=2, check_val_every_n_epoch=None)
    assert record.validated == [1, 5]  # the one due after batch 3 left out, the next one run
    assert trainer.fit_loop.epoch_loop._skip_next_val is False  # Lightning cleared the flag when it skipped


@pytest.mark.parametrize("use", [True, False])
def test_uses_distributed_sampler_reads_the_trainer_argument(use):
    trainer = pl.Trainer(logger=False, use_distributed_sampler=use)
    assert hasattr(trainer, "_accelerator_connector"), RENAMED.format("Trainer._accelerator_connector")
    assert compat.uses_distributed_sampler(trainer) is use


def test_attached_trainer_is_none_outside_a_trainer(tmp_path):
    module = Boring()
    assert "_trainer" in vars(module), RENAMED.format("LightningModule._trainer")
    assert compat.attached_trainer(module) is None
    with pytest.raises(RuntimeError):
        _ = module.trainer  # the public property raises instead: why compat reads the attribute
    inside = Boring(probe=compat.attached_trainer)
    trainer = fit(inside, tmp_path, max_steps=1, limit_val_batches=0)
    assert inside.seen == [trainer]
