"""First-order MAML (Finn, Abbeel and Levine, 2017, section 5.2)."""

from __future__ import annotations

from torch import Tensor

from lightning_meta.algorithms.adaptation import overridden
from lightning_meta.algorithms.functional import Params, detach
from lightning_meta.algorithms.maml import MAML
from lightning_meta.data.episode import Episode


class FOMAML(MAML):
    """First-order MAML: k SGD steps on the support set, no graph kept; the meta-gradient is the query-loss
    gradient at the adapted weights, grad_phi L_query(phi_k), i.e. MAML with d phi_k / d theta taken as I.
    MAML's defaults (the paper's Omniglot 5-way 1-shot inner loops).

    supervised-reptile's `--foml --foml-tail T` (the last inner mini-batch held out and used for the final
    gradient) is this algorithm with `data.train_queries=T`; it counts the held-out batch as an inner
    iteration, so its `--inner-iters k` is `inner.steps=k-1` here.

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML 2017.
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
    """

    second_order = False

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        fast = detach(self.inner_loop(params, episode.support_x, episode.support_y, self.inner))
        return self.scaled_grad(self.query_objective, has_aux=True)(fast, episode)

    def splits_inner(self) -> bool:
        """No graph links FOMAML's inner loop to its query gradient, so the split path (`task_gradients`) is
        `meta_gradient` itself cut in two halves that call the same hooks: it honours every inner-loop hook and
        any inner optimizer. A learner that overrides `meta_gradient` runs it per task instead."""
        return not overridden(self, FOMAML, ("meta_gradient",))

    def task_gradients(self, params: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        """As `meta_gradient` per task. On the "split" path (`batching=auto` on CPU with small support sets and
        large query sets) the inner loops (`inner_loop`) run in one vmap over the support sets, then each task's
        query gradient at its adapted weights one task at a time."""
        if self.batching_path(batch) != "split":
            return super().task_gradients(params, batch)
        return self.query_gradients_per_task(self.adapted_per_task(params, batch), batch)
