"""Callbacks train.py adds to every run: `LastCheckpoint` keeps `last.ckpt` fresh and loadable, `NonFiniteGuard`
stops a run whose meta-gradient, loss or weights stop being finite, `CheckpointsOfThisRun` keeps a resumed run's
best-checkpoint bookkeeping inside the run being resumed."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch

from lightning_meta.compat import skip_next_validation, validation_due
from lightning_meta.errors import ConfigError, DivergenceError


class NonFiniteError(DivergenceError):
    """Training produced NaN or inf; the message names the step, the quantity and the likely fix."""


def all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite, in one check (a finite tensor has a finite sum of squares
    unless its values reach ~1e19 in float32, far beyond any weight or gradient a run survives)."""
    tensors = [t for t in tensors if t is not None]
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all())


class SignalExit(SystemExit):
    """A run interrupted at once by a second Ctrl-C / SIGTERM (the first asks for a clean stop after the step): the
    command exits with 128 + the signal's number, as a shell reports a process a signal ended (130, 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class LastCheckpoint(pl.Callback):
    """Owns `last.ckpt`: rewrites it every `every_n_steps` meta-iterations and/or every `every_minutes` minutes,
    when training ends, and on the first Ctrl-C or SIGTERM, after which it stops the run cleanly. All ranks agree
    before saving or stopping, so DDP runs do both on the same step.

    A second signal while the step still runs interrupts at once (`SignalExit`: exit status 130 or 143, last.ckpt as
    the last periodic save left it); one during a save waits until the file is renamed into place, and one after the
    stop was decided is ignored. After a stop on request the handlers stay in place (ignoring further signals)
    until `release()`, which train.py calls once it has closed the loggers. `take_stop_signal()` tells the command
    line which signal stopped the process's run, for its exit status.

    Each save writes `last.ckpt.tmp` and renames it over `last.ckpt` (an atomic `os.replace`), so a `kill -9` at
    any moment leaves the previous or the new checkpoint, never a torn one; weights that are not finite are never
    saved. Lightning 2.6's `ModelCheckpoint(save_last=True)` rewrites last.ckpt only together with a top-k save,
    so train.py leaves last.ckpt to this callback alone.

    Args:
        path: where to write the checkpoint (train.py: `<output_dir>/checkpoints/last.ckpt`).
        every_n_steps: meta-iterations between saves (None: no step-based saves).
        every_minutes: minutes of training between saves (None: no time-based saves).
    """

    def __init__(self, path: str | Path, every_n_steps: int | None = None, every_minutes: float | None = 5.0) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"callbacks.last_checkpoint.every_n_steps={every_n_steps}; give 1 or more, or null")
        if every_minutes is not None and not every_minutes > 0:
            raise ConfigError(
                f"callbacks.last_checkpoint.every_minutes={every_minutes}; give a positive number, or null"
            )
        self.path = Path(path)
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self.requested = False  # a signal arrived in this process
        self.signum: int | None = None  # the first signal that arrived
        self.stopped = False  # training stopped on request (on every rank)
        self.saved_step: int | None = None
        self._saved_at = time.monotonic()
        self._previous: dict[int, object] = {}
        self._saving = False  # a save is in progress: a second signal waits for it
        self._pending: int | None = None  # a second signal that arrived during a save
        self._stopping = False  # the stop is decided: further signals are ignored
        self._after_save: list[Callable[[], None]] = []

    # The signal that stopped a run of this process, for the command line's exit status (cli.guarded).
    _stop_signal: ClassVar[int | None] = None

    @classmethod
    def take_stop_signal(cls) -> int | None:
        """The signal (SIGINT or SIGTERM) that stopped a run in this process since the last call, and forget it."""
        signum, cls._stop_signal = cls._stop_signal, None
        return signum

    @staticmethod
    def stopped_on_request(trainer: pl.Trainer) -> bool:
        """Whether `trainer` stopped early because of a signal (train.py then skips meta-testing)."""
        return any(isinstance(cb, LastCheckpoint) and cb.stopped for cb in trainer.callbacks)

    def when_saved(self, fn: Callable[[], None]) -> None:
        """Call `fn` once, right after the next save of last.ckpt (train.py writes a resumed run's config.yaml
        then: the config on disk always describes the run that wrote last.ckpt)."""
        self._after_save.append(fn)

    def _request(self, signum, frame) -> None:
        if not self.requested:
            self.requested, self.signum = True, signum
        elif self._stopping:
            return  # the step is done and the stop decided: finishing it is the fastest way out
        elif self._saving:
            self._pending = signum  # raised once the checkpoint is renamed into place
        else:
            raise SignalExit(signum)

    def save(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt atomically (every rank calls it; rank 0 writes), unless the weights are not finite."""
        if not all_finite(trainer.lightning_module.parameters()):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        self._saving = True
        try:
            trainer.save_checkpoint(tmp)  # ends with a barrier: rank 0 has written tmp when every rank returns
            if trainer.is_global_zero:
                with open(tmp, "rb") as file:
                    os.fsync(file.fileno())
                os.replace(tmp, self.path)
        finally:
            self._saving = False
        self.saved_step, self._saved_at = trainer.global_step, time.monotonic()
        while self._after_save:
            self._after_save.pop(0)()
        if self._pending is not None and not self._stopping:
            raise SignalExit(self._pending)

    def _due(self, trainer: pl.Trainer) -> bool:
        by_steps = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        by_time = self.every_minutes is not None and time.monotonic() - self._saved_at >= 60 * self.every_minutes
        return by_steps or by_time

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_at = time.monotonic()
        if trainer.ckpt_path and Path(trainer.ckpt_path).resolve() == self.path.resolve():
            self.saved_step = trainer.global_step  # resumed from this very file: it holds this step
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread (e.g. a notebook worker): leave the handlers alone
                pass

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        # One all-reduce a step for both decisions: any rank asked to stop, any rank's clock says save.
        flags = torch.tensor([float(self.requested), float(self._due(trainer))], device=pl_module.device)
        requested, due = (bool(v > 0) for v in trainer.strategy.reduce(flags, reduce_op="sum"))
        self._stopping = requested
        if requested or due:
            self.save(trainer)
        if requested:
            # Lightning validates whenever it is asked to stop. Skip that validation unless one is due at this
            # step anyway: a stopped and resumed run then validates, and picks its best checkpoint, at the same
            # steps as an uninterrupted one, and a preemption's grace period is not spent validating.
            skip_next_validation(trainer, not validation_due(trainer))
            trainer.should_stop = self.stopped = True
            LastCheckpoint._stop_signal = self.signum or signal.SIGTERM  # another rank's signal: a scheduler's
            pl.utilities.rank_zero_info(f"Stopped on request at step {trainer.global_step}; resume with "
                                        f"ckpt_path={self.path}")  # fmt: skip

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.saved_step != trainer.global_step:
            self.save(trainer)
        if not self.stopped:  # stopped on request: a repeated signal is ignored until the owner's release()
            self.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SignalExit):
            step = f" (step {self.saved_step})" if self.saved_step is not None else ""
            kept = f"{self.path}{step} is kept; resume with ckpt_path={self.path}" if self.path.is_file() else (
                "no last.ckpt was written")
            pl.utilities.rank_zero_info(f"Interrupted at step {trainer.global_step} by a second signal; {kept}")
        self.release()

    def release(self) -> None:
        """Give SIGINT and SIGTERM back to the handlers they had before training started."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _in_run(path: str, saved_dir: str | None, dirpath: str) -> str | None:
    """`path`, a file the saved ModelCheckpoint state names, as the same file in `dirpath`; None when it was not in
    the saved checkpoints folder or is not in `dirpath`."""
    if saved_dir is None or Path(path).parent != Path(saved_dir):
        return None
    here = Path(dirpath) / Path(path).name
    return str(here) if here.is_file() else None


def rebase_checkpoint_state(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A ModelCheckpoint's saved state with every file it names moved to `dirpath` (the checkpoints folder of the run
    being resumed), or, when any of them is not there (a resume into another run directory, a deleted file, a
    checkpoint shipped from elsewhere), with the best-checkpoint bookkeeping dropped: the resumed run then keeps and
    tests the best of its own validations. A path saved in a checkpoint is never followed outside the run."""
    saved_dir = state.get("dirpath")
    named = [state.get("best_model_path"), state.get("kth_best_model_path"), state.get("last_model_path")]
    named += list(state.get("best_k_models") or {})
    moved = {path: _in_run(path, saved_dir, dirpath) for path in named if path}
    if all(here is not None for here in moved.values()):
        new = {**state, "dirpath": dirpath}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if state.get(key):
                new[key] = moved[state[key]]
        new["best_k_models"] = {moved[k]: v for k, v in (state.get("best_k_models") or {}).items()}
        return new
    kept = ("monitor", "current_score")  # the rest falls back to the callback's own (empty) values
    return {**{k: state[k] for k in kept if k in state}, "dirpath": dirpath, "best_model_path": "",
            "best_model_score": None}  # fmt: skip


class CheckpointsOfThisRun(pl.Callback):
    """On resume, points the ModelCheckpoint states loaded from the checkpoint at the files of the run being
    resumed (`rebase_checkpoint_state`): a copied or moved run, or a checkpoint resumed into another output_dir,
    never tests, compares against or deletes another run's best checkpoint."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("callbacks") or {}
        for callback in trainer.checkpoint_callbacks:  # called before any callback loads its state
            key = callback.state_key
            if key in states and callback.dirpath:
                states[key] = rebase_checkpoint_state(states[key], str(callback.dirpath))


class NonFiniteGuard(pl.Callback):
    """Stops training at the first non-finite meta-gradient, training loss or weight, with one line that names
    the step, the quantity and what to change. It raises before the optimizer applies a non-finite gradient, and
    before `LastCheckpoint` (listed after it) could save, so the last checkpoint on disk stays the last good one.

    Under `16-mixed` a non-finite gradient is the GradScaler's business (it skips that step and lowers its
    scale), so only the loss and the weights are checked there. Reptile and the gradient-combination study score
    their query loss on logged steps only (`MetaLearner.log_query_metrics`); their meta-gradients and weights are
    checked on every step.
    """

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if str(trainer.precision) == "16-mixed":
            return
        if all_finite(p.grad for p in pl_module.parameters()):
            return
        bad = [name for name, p in pl_module.named_parameters() if p.grad is not None and not all_finite([p.grad])]
        # The meta-gradient is all-reduced already, so every rank sees the same and raises on the same step.
        if bad:
            self._stop(trainer, pl_module, f"the meta-gradient is not finite (in {bad[0]})")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        loss = trainer.callback_metrics.get("train/query_loss")
        loss_bad = loss is not None and not math.isfinite(float(loss))
        weights_bad = not all_finite(pl_module.parameters())
        flags = torch.tensor([float(loss_bad), float(weights_bad)], device=pl_module.device)
        loss_bad, weights_bad = (bool(v > 0) for v in trainer.strategy.reduce(flags, reduce_op="sum"))
        if weights_bad:
            self._stop(trainer, pl_module, "the meta-weights are not finite after the optimizer step")
        if loss_bad:
            self._stop(trainer, pl_module, "the training query loss (train/query_loss) is not finite")

    @staticmethod
    def _stop(trainer: pl.Trainer, pl_module: pl.LightningModule, quantity: str) -> None:
        kept = next((cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)), None)
        if kept is not None and kept.path.is_file():
            step = f" (step {kept.saved_step})" if kept.saved_step is not None else ""
            kept_text = f"{kept.path}{step} is kept"
        else:
            kept_text = "no checkpoint was written"
        raise NonFiniteError(
            f"step {trainer.global_step + 1}: {quantity}; training stopped and {kept_text}. Likely fix: "
            f"{likely_fix(pl_module)}"
        )


def likely_fix(pl_module: pl.LightningModule) -> str:
    """The step sizes to lower, with their current values, read from the run's config when the learner has one."""
    algorithm = (pl_module.hparams.get("config") or {}).get("algorithm", {})
    inner = algorithm.get("inner") if isinstance(algorithm.get("inner"), dict) else None
    inner_lr = inner.get("lr") if inner else algorithm.get("inner_lr")
    inner_key = "algorithm.inner.lr" if inner else "algorithm.inner_lr"
    parts = []
    if inner_lr is not None:
        parts.append(f"lower {inner_key} (now {inner_lr:g})")
    outer_lr = (algorithm.get("outer") or {}).get("lr")
    if outer_lr is not None:
        parts.append(f"lower algorithm.outer.lr (now {outer_lr:g})")
    parts.append("or set algorithm.outer.grad_clip (e.g. 10)")
    return ", ".join(parts)
