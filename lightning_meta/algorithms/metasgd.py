"""Meta-SGD (Li, Zhou, Chen and Li, 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_meta.algorithms.functional import Params
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.algorithms.maml import MAML
from lightning_meta.errors import ConfigError


class MetaSGD(MAML):
    """Meta-SGD: MAML whose inner SGD step size is a learned tensor per weight, alpha, meta-learned with the
    initialisation: phi = theta - alpha * grad L_support(theta) (element-wise), and the meta-gradient of the query
    loss reaches both theta and alpha. The step sizes start at `inner.lr` everywhere (learn2learn's choice) and are
    used at evaluation too (`eval_inner.lr` is ignored). Meta-parameters `inner_lrs.<weight name, dots as :>`.

    References:
        Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. arXiv:1707.09835, 2017.
    """

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        if self.inner.optimizer != "sgd":
            raise ConfigError(f"algorithm.inner.optimizer={self.inner.optimizer!r}: Meta-SGD learns SGD step sizes; "
                             "use algorithm.inner.optimizer=sgd")  # fmt: skip
        self.inner_lrs = nn.ParameterDict({
            _key(name): nn.Parameter(torch.full_like(p.detach(), self.inner.lr))
            for name, p in backbone.named_parameters() if self.adapts(name)
        })  # fmt: skip

    def inner_lr(self, params: Params, loop: InnerLoop) -> Params:
        return {name: params[f"inner_lrs.{_key(name)}"] for name in self._backbone_names if self.adapts(name)}


def _key(name: str) -> str:
    return name.replace(".", ":")  # ParameterDict keys cannot hold dots
