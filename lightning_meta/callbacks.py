"""Callbacks train.py adds to every run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytorch_lightning as pl


class GracefulStop(pl.Callback):
    """Keeps `last.ckpt` resumable: saves it when training ends, and on the first Ctrl-C or SIGTERM finishes
    the current meta-iteration, saves it and stops cleanly (a second Ctrl-C interrupts at once). All ranks
    agree before stopping, so DDP runs stop on the same step.

    Lightning 2.6's `ModelCheckpoint(save_last=True)` rewrites last.ckpt only together with a top-k save, so a
    run whose final validation did not improve would otherwise end with a stale last.ckpt.

    Args:
        ckpt_path: where to write the checkpoint (train.py: `<output_dir>/checkpoints/last.ckpt`).
    """

    def __init__(self, ckpt_path: str | Path) -> None:
        self.ckpt_path = str(ckpt_path)
        self.requested = False  # a signal arrived in this process
        self.stopped = False  # training stopped on request (on every rank)
        self._saved_step: int | None = None
        self._previous: dict[int, object] = {}

    @staticmethod
    def stopped_on_request(trainer: pl.Trainer) -> bool:
        """Whether `trainer` stopped early because of a signal (train.py then skips meta-testing)."""
        return any(isinstance(cb, GracefulStop) and cb.stopped for cb in trainer.callbacks)

    def _request(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.ckpt_path)  # every rank calls it; rank 0 writes
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread (e.g. a notebook worker): leave the handlers alone
                pass

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self._save(trainer)
            # Lightning validates whenever it is asked to stop. Skip that validation unless one is due at this
            # step anyway: a stopped and resumed run then validates, and picks its best checkpoint, at the same
            # steps as an uninterrupted one, and a preemption's grace period is not spent validating.
            loop = trainer.fit_loop.epoch_loop
            loop._skip_next_val = not loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
            trainer.should_stop = self.stopped = True
            pl.utilities.rank_zero_info(f"Stopped on request at step {trainer.global_step}; resume with "
                                        f"ckpt_path={self.ckpt_path}")  # fmt: skip

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            self._save(trainer)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
