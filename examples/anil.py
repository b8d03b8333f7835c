"""ANIL ("almost no inner loop"): MAML whose inner loop adapts only the head; the body is still meta-learned.

A worked example of writing your own algorithm: subclass an existing learner, override one hook.
Select it with `python train.py experiment=maml_omniglot_5w1s algorithm._target_=examples.anil.ANIL`
(see "Write your own algorithm" in README.md).
"""

from __future__ import annotations

from torch import Tensor

from lightning_meta.algorithms import MAML
from lightning_meta.algorithms.functional import Params, sgd_step


class ANIL(MAML):
    """MAML with an inner loop over the head alone: the body's fast weights stay theta, so adaptation is a few
    SGD steps of a linear classifier on meta-learned features. The meta-gradient is MAML's (second order) and
    reaches the body through the adapted head. The inner loop uses the whole support set (no mini-batches).

    References:
        Raghu, Raghu, Bengio, Vinyals. Rapid Learning or Feature Reuse? Towards Understanding the
        Effectiveness of MAML. ICLR 2020.
    """

    head_prefix = "head."  # parameters adapted in the inner loop: `Conv4.head`, `MLP.head`

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, evaluation: bool = False) -> Params:
        steps = self.eval_inner_steps if evaluation else self.inner_steps
        lr = self.eval_inner_lr if evaluation else self.inner_lr
        head = {k: v for k, v in params.items() if k.startswith(self.head_prefix)}
        if not head:
            raise ValueError(
                f"ANIL adapts the parameters named {self.head_prefix}*, but the backbone has none; "
                "name the last layer `head` or set ANIL.head_prefix"
            )
        body = {k: v for k, v in params.items() if k not in head}
        head_loss = lambda h: self.loss({**body, **h}, support_x, support_y)[0]
        for _ in range(steps):
            head = sgd_step(head, self.scaled_grad(head_loss)(head), lr)
        return {**body, **head}
