"""Callbacks train.py adds to every run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytorch_lightning as pl


class GracefulStop(pl.Callback):
    """On the first Ctrl-C or SIGTERM, finish the current meta-iteration, save `last.ckpt` and stop cleanly;
    a second Ctrl-C interrupts at once. All ranks agree before stopping, so DDP runs stop on the same step."""

    def __init__(self, ckpt_path: str | Path) -> None:
        self.ckpt_path = str(ckpt_path)
        self.requested = False
        self._previous: dict[int, object] = {}

    def _request(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread (e.g. a notebook worker): leave the handlers alone
                pass

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            trainer.save_checkpoint(self.ckpt_path)
            trainer.should_stop = True
            pl.utilities.rank_zero_info(f"Stopped on request at step {trainer.global_step}; resume with "
                                        f"ckpt_path={self.ckpt_path}")  # fmt: skip

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
