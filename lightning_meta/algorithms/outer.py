"""The outer loop as a value: how the meta-parameters take one optimizer step per meta-iteration on the averaged
meta-gradient (`OuterLoop`), mirroring `InnerLoop`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lightning_meta.errors import ConfigError

OUTER_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class OuterLoop:
    """One step of `optimizer` at `lr` per meta-iteration on the meta-batch's mean meta-gradient.

    Args:
        lr: outer learning rate (Reptile: the meta step size epsilon).
        lr_final: anneal `lr` linearly to this value over `trainer.max_steps` (None: constant).
        optimizer: "adam" or "sgd".
        grad_clip: clip the meta-gradient to this norm (None: no clipping).
    """

    lr: float = 1e-3
    lr_final: float | None = None
    optimizer: str = "adam"
    grad_clip: float | None = None

    def check(self, where: str) -> OuterLoop:
        """Raise a ConfigError naming the config key (`algorithm.<where>.<field>`) of a value out of range."""
        problems = {
            "lr": (not self.lr >= 0, "a learning rate >= 0"),
            "lr_final": (self.lr_final is not None and not self.lr_final >= 0, "null or a learning rate >= 0"),
            "optimizer": (self.optimizer not in OUTER_OPTIMIZERS, " or ".join(OUTER_OPTIMIZERS)),
            # a negative norm would turn the clipped meta-gradient around
            "grad_clip": (self.grad_clip is not None and not self.grad_clip > 0, "null or a norm > 0"),
        }
        for field, (bad, hint) in problems.items():
            if bad:
                raise ConfigError(f"algorithm.{where}.{field}={getattr(self, field)!r}; use {hint}")
        return self

    def replace(self, **changes) -> OuterLoop:
        return dataclasses.replace(self, **changes)

    def configure(self, params: list[torch.nn.Parameter], max_steps: int | None):
        """What `LightningModule.configure_optimizers` returns: the optimizer, and with `lr_final` a per-step
        linear schedule from `lr` to `lr_final` over `max_steps` meta-iterations."""
        opt = OUTER_OPTIMIZERS[self.optimizer](params, lr=self.lr)
        if self.lr_final is None:
            return opt
        total, final = max(int(max_steps), 1), (self.lr_final / self.lr if self.lr else 0.0)
        anneal = lambda step: 1.0 - (1.0 - final) * min(step / total, 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, anneal)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
