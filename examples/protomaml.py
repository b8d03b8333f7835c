"""Proto-MAML: MAML whose classifier head starts each task from the support set's class prototypes.

Select it with `python train.py experiment=maml_omniglot_5w1s algorithm._target_=examples.protomaml.ProtoMAML`.
It overrides one hook, `inner_trajectory`, so every batching path (loop, vmap, split) honours it.
"""

from __future__ import annotations

from torch import Tensor, arange
from torch.func import functional_call

from lightning_meta.algorithms import MAML
from lightning_meta.algorithms.functional import Params


class ProtoMAML(MAML):
    """Before the inner loop the head is set from the class prototypes c_k (the mean body embedding of class k's
    support examples): weight_k = 2 c_k, bias_k = -||c_k||^2, so the initial logits are the negative squared
    distances to the prototypes up to a per-query constant (a prototypical network). The inner loop then adapts
    every weight from there, and the second-order meta-gradient reaches the body through the prototypes too; the
    head's own meta-parameters are never used. The backbone has `features` (body) and `head` (linear) modules.

    References:
        Triantafillou et al. Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples.
        ICLR 2020 (section 3.2, Proto-MAML).
    """

    def inner_trajectory(self, params: Params, support_x: Tensor, support_y: Tensor, loop, state=None):
        head = prototype_head(self.backbone, params, support_x, support_y)
        return super().inner_trajectory({**params, **head}, support_x, support_y, loop, state)


def prototype_head(backbone, params: Params, x: Tensor, y: Tensor) -> Params:
    """The head weights of the prototypes of the support set (x, y) under `params`.

    Shapes: x (N*K, *x), y (N*K,) with labels 0..N-1 -> head.weight (N, D), head.bias (N,)."""
    body = {k.removeprefix("features."): v for k, v in params.items() if k.startswith("features.")}
    embedding = functional_call(backbone.features, body, (x,))  # (N*K, D)
    ways = backbone.head.out_features
    one_hot = (y[:, None] == arange(ways, device=y.device)).to(embedding.dtype)  # (N*K, N), no data-dependent ops
    prototypes = (one_hot.T @ embedding) / one_hot.sum(0).clamp(min=1)[:, None]  # (N, D); 0 for an absent class
    return {"head.weight": 2 * prototypes, "head.bias": -(prototypes**2).sum(1)}
