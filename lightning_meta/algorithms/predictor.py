"""What `MetaLearner.adapt` returns: a model for one new task, backed by fast weights."""

from __future__ import annotations

import torch
from torch import Tensor


class Predictor:
    """Fast weights adapted to one task's support set; the meta-learner's own weights stay untouched.

    Shapes:
        x (B, *x) -> outputs (B, out); `classify` -> labels (B,).
    """

    def __init__(self, learner, params: dict[str, Tensor], support_x: Tensor) -> None:
        self.learner, self.params, self.support_x = learner, params, support_x

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self.learner.predict(self.params, self.support_x, x.to(self.support_x.device))

    def classify(self, x: Tensor) -> Tensor:
        return self(x).argmax(-1)
