"""ANIL ("almost no inner loop"): MAML whose inner loop adapts only the head; the body is still meta-learned.

A worked example of writing your own algorithm: subclass an existing learner, override one hook.
Select it with `python train.py experiment=maml_omniglot_5w1s algorithm._target_=examples.anil.ANIL`
(see "Write your own algorithm" in README.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_meta.algorithms import MAML
from lightning_meta.errors import ConfigError


class ANIL(MAML):
    """MAML with an inner loop over the head alone: the body's fast weights stay theta, so adaptation is a few
    steps of a linear classifier on meta-learned features (with the configured inner optimizer and mini-batches).
    The meta-gradient is MAML's (second order) and reaches the body through the adapted head.

    References:
        Raghu, Raghu, Bengio, Vinyals. Rapid Learning or Feature Reuse? Towards Understanding the
        Effectiveness of MAML. ICLR 2020.
    """

    head_prefix = "head."  # parameters adapted in the inner loop: `Conv4.head`, `MLP.head`

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        if not any(self.adapts(name) for name, _ in backbone.named_parameters()):
            raise ConfigError(f"ANIL adapts the parameters named {self.head_prefix}*, but the backbone has none; "
                             "name the last layer `head` or set ANIL.head_prefix")  # fmt: skip

    def adapts(self, name: str) -> bool:
        return name.startswith(self.head_prefix)
