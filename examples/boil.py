"""BOIL: MAML whose inner loop adapts the body and leaves the head where it is.

Select it with `python train.py experiment=maml_omniglot_5w1s algorithm._target_=examples.boil.BOIL`.
It overrides one hook, `adapts`, so every batching path (loop, vmap, split) honours it.
"""

from __future__ import annotations

from lightning_meta.algorithms import MAML


class BOIL(MAML):
    """MAML with an inner loop over the body alone: the head stays at its meta-learned weights during adaptation,
    so a task is solved by moving the features towards a fixed classifier. The meta-gradient is MAML's (second
    order) and reaches the head through the query loss.

    References:
        Oh, Yoo, Kim, Yun. BOIL: Towards Representation Change for Few-shot Learning. ICLR 2021.
    """

    head_prefix = "head."  # parameters left out of the inner loop: `Conv4.head`, `MLP.head`

    def adapts(self, name: str) -> bool:
        return super().adapts(name) and not name.startswith(self.head_prefix)
