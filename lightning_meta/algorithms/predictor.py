"""What `MetaLearner.adapt` returns: a model for one new task, backed by fast weights."""

from __future__ import annotations

import torch
from torch import Tensor


class Predictor:
    """Fast weights adapted to one task's support set; the meta-learner's own weights stay untouched.

    The fast weights are a private copy: training the learner further, or adapting it to another task, leaves
    this predictor unchanged (even with `eval_inner.steps=0`, where they equal the meta-weights). Predictions
    follow the learner's `transductive` flag: transductive calls normalise a batch by its own statistics, so
    predict all queries of a task in one call; non-transductive calls predict each input with the support set.

    Shapes:
        x (B, *x) -> outputs (B, out); `classify` -> labels (B,).
    """

    def __init__(self, learner, params: dict[str, Tensor], support_x: Tensor) -> None:
        self.learner, self.support_x = learner, support_x
        self.params = {name: value.detach().clone() for name, value in params.items()}

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self.learner.predict(self.params, self.support_x, x.to(self.support_x.device))

    def classify(self, x: Tensor) -> Tensor:
        """The most likely class of each input (classification tasks)."""
        return self(x).argmax(-1)
