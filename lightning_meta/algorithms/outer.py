"""The outer loop as a value: how the meta-parameters take one optimizer step per meta-iteration on the averaged
meta-gradient (`OuterLoop`), mirroring `InnerLoop`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer

from lightning_meta.errors import ConfigError

OUTER_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
ANNEAL_OVER = ("steps", "time")


@dataclass(frozen=True)
class OuterLoop:
    """One step of `optimizer` at `lr` per meta-iteration on the meta-batch's mean meta-gradient.

    Args:
        lr: outer learning rate (Reptile: the meta step size epsilon).
        lr_final: anneal `lr` linearly to this value over the run (None: constant).
        optimizer: "adam" or "sgd".
        grad_clip: clip the meta-gradient to this norm (None: no clipping).
        anneal_over: "steps" (over trainer.max_steps) or "time" (over trainer.max_time).
            "time" is for a run that `max_time` stops (a time-budgeted preset): it ends annealed wherever the
            machine's speed puts its last step. The step size then follows the clock, so two runs of one seed
            differ in their last digits.
    """

    lr: float = 1e-3
    lr_final: float | None = None
    optimizer: str = "adam"
    grad_clip: float | None = None
    anneal_over: str = "steps"

    def check(self, where: str) -> OuterLoop:
        """Raise a ConfigError naming the config key (`algorithm.<where>.<field>`) of a value out of range."""
        problems = {
            "lr": (not self.lr >= 0, "a learning rate >= 0"),
            "lr_final": (self.lr_final is not None and not self.lr_final >= 0, "null or a learning rate >= 0"),
            "optimizer": (self.optimizer not in OUTER_OPTIMIZERS, " or ".join(OUTER_OPTIMIZERS)),
            # a negative norm would turn the clipped meta-gradient around
            "grad_clip": (self.grad_clip is not None and not self.grad_clip > 0, "null or a norm > 0"),
            "anneal_over": (self.anneal_over not in ANNEAL_OVER, " or ".join(ANNEAL_OVER)),
        }
        for field, (bad, hint) in problems.items():
            if bad:
                raise ConfigError(f"algorithm.{where}.{field}={getattr(self, field)!r}; use {hint}")
        return self

    def replace(self, **changes) -> OuterLoop:
        return dataclasses.replace(self, **changes)

    def progress(self, trainer: pl.Trainer) -> Callable[[int], float]:
        """The share of `trainer`'s run done at meta-iteration `step`, which `lr_final` anneals over: step /
        trainer.max_steps, or with anneal_over=time the training time spent over trainer.max_time (the Timer
        callback's clock, which a checkpoint carries across a resume). Raises a ConfigError before the run when
        the trainer cannot give it."""
        if self.anneal_over == "steps":
            total = max(int(trainer.max_steps), 1)
            return lambda step: step / total
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None:
            raise ConfigError("algorithm.outer.anneal_over=time anneals over trainer.max_time, which is not set; give "
                              "trainer.max_time (e.g. 00:00:27:00), or algorithm.outer.anneal_over=steps")  # fmt: skip
        if trainer.world_size > 1:  # each process's clock would give its own step size: the replicas would drift
            raise ConfigError("algorithm.outer.anneal_over=time under DDP would give each process its own step size; "
                              "use algorithm.outer.anneal_over=steps with trainer.max_steps")  # fmt: skip

        def spent(step: int) -> float:
            elapsed = timer.time_elapsed("train")
            return elapsed / max(elapsed + timer.time_remaining("train"), 1e-9)

        return spent

    def configure(self, params: list[torch.nn.Parameter], progress: Callable[[int], float] | None):
        """What `LightningModule.configure_optimizers` returns: the optimizer, and with `lr_final` a per-step
        linear schedule from `lr` to `lr_final`, where `progress(step)` is the share of the run done at
        meta-iteration `step` (0 to 1)."""
        opt = OUTER_OPTIMIZERS[self.optimizer](params, lr=self.lr)
        if self.lr_final is None:
            return opt
        final = self.lr_final / self.lr if self.lr else 0.0
        anneal = lambda step: 1.0 - (1.0 - final) * min(max(progress(step), 0.0), 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, anneal)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
