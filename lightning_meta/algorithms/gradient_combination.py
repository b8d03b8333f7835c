"""Reptile's gradient-combination study (Nichol, Achiam and Schulman, 2018, section 6.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_meta.algorithms.functional import Params
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.algorithms.logged_queries import logged_query_metrics
from lightning_meta.algorithms.outer import OuterLoop
from lightning_meta.algorithms.reptile import Reptile
from lightning_meta.data.episode import Episode
from lightning_meta.errors import ConfigError

# The study's shared settings (supervised-reptile README, "Comparing different inner-loop gradient combinations":
# --sgd --inner-batch 25 --learning-rate 0.0003 --eval-batch 25 --eval-iters 5). Its TensorFlow loss is the *sum*
# of the per-example cross-entropies (tf.train.Optimizer.minimize of a vector), this project's the mean: an SGD
# step of 0.0003 on the sum of 25 losses is a step of 0.0003 * 25 = 0.0075 on their mean.
STUDY_INNER = InnerLoop(steps=2, lr=0.0075, batch_size=25, optimizer="sgd")
STUDY_EVAL_INNER = InnerLoop(steps=5, lr=0.0075, batch_size=25, optimizer="sgd")
STUDY_OUTER = OuterLoop(lr=0.25, lr_final=0.0, optimizer="sgd")
SCALES = ("sum", "mean")


class GradientCombination(Reptile):
    """A meta-gradient built from chosen steps of the inner loop: scale * sum_{i in combination} (phi_{i-1} - phi_i),
    where step i (1-based) is taken at phi_{i-1} on the i-th consecutive support mini-batch.

    With the inner SGD of step size alpha, phi_{i-1} - phi_i = alpha g_i, g_i the mini-batch gradient at phi_{i-1}:
    the meta-gradient is alpha sum_i g_i ("sum") or alpha / |combination| sum_i g_i ("mean"), and the outer SGD at
    `outer.lr` epsilon steps theta <- theta - epsilon * meta-gradient (annealed to `outer.lr_final`, as Reptile). So
    - every step, "sum", is Reptile: theta - phi_k (for any inner optimizer);
    - [1] with one step is joint training (SGD on the mixture of tasks);
    - [k] with k steps is supervised-reptile's `--foml`: the last step phi_{k-1} - phi_k, i.e. alpha times
      first-order MAML's gradient with the k-th mini-batch as its query set.
    The combination is fixed at construction, so the loop has no data-dependent control flow (it runs under vmap).

    Args:
        combination: 1-based inner steps to combine, e.g. [1, 2]; None: every step (Reptile).
        scale: "sum" (the paper's g1 + g2) or "mean" (the 1/|combination|-scaled variants, (g1 + g2) / 2).
        pool_queries: in meta-training, take the mini-batches from the support set followed by the query set
            (the four-step runs: an Omniglot character has 20 drawings, so 20 shots per class leave none for the
            query set every episode has; 19 shots + 1 query, pooled, give the README's 4 disjoint batches of 25).
        inner: the training inner loop; default the study's 2 SGD steps at 0.0075 on mini-batches of 25.
        eval_inner: the evaluation inner loop; default the study's 5 SGD steps at 0.0075 on the support set.
        outer: the outer SGD; the study's meta step size epsilon 0.25, annealed to 0 as Reptile.
        inner_state: as Reptile; "fresh" (plain SGD has no state to carry).
        transductive: as MetaLearner; False, as the study's commands (no --transductive).

    References:
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        inner: InnerLoop = STUDY_INNER,
        eval_inner: InnerLoop = STUDY_EVAL_INNER,
        outer: OuterLoop = STUDY_OUTER,
        combination: list[int] | None = None,
        scale: str = "sum",
        pool_queries: bool = False,
        inner_state: str = "fresh",
        transductive: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, inner=inner, eval_inner=eval_inner, outer=outer, inner_state=inner_state,
                         transductive=transductive, **kwargs)  # fmt: skip
        steps = self.inner.steps
        chosen = list(range(1, steps + 1)) if combination is None else [int(i) for i in combination]
        if not chosen or len(set(chosen)) != len(chosen) or not all(1 <= i <= steps for i in chosen):
            raise ConfigError(
                f"algorithm.combination={combination}; give distinct inner steps between 1 and "
                f"algorithm.inner.steps={steps} (e.g. [1, 2]), or null for every step"
            )
        if scale not in SCALES:
            raise ConfigError(f"algorithm.scale={scale!r}; choose one of {', '.join(SCALES)}")
        weight = 1.0 / len(chosen) if scale == "mean" else 1.0
        self.pool_queries = pool_queries
        self.weights = tuple(weight if i in chosen else 0.0 for i in range(1, steps + 1))  # per inner step

    def _adapt(self, params: Params, episode: Episode, state):
        """(combined meta-gradient, query metrics, final inner state) of one task; the inner loop of
        `inner_iterates`, keeping the chosen steps."""
        support_x, support_y = episode.support_x, episode.support_y
        if self.pool_queries:  # (N*(K+Q), *x): the queries last, so the first batches are the support's
            support_x, support_y = torch.cat([support_x, episode.query_x]), torch.cat([support_y, episode.query_y])
        iterates = self.inner_iterates(params, support_x, support_y, self.inner, state)
        fast, state = next(iterates)
        combined = {k: torch.zeros_like(v) for k, v in params.items()}
        for weight, (moved, end) in zip(self.weights, iterates, strict=True):
            if weight:  # fixed by the config, not by the data
                combined.update({k: combined[k] + weight * (fast[k] - moved[k]) for k in fast})
            fast, state = moved, end
        # Logging only, as Reptile (with pool_queries the queries were trained on).
        metrics = logged_query_metrics(self, {**params, **fast}, episode)
        return combined, metrics, state
