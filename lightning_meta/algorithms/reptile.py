"""Reptile (Nichol, Achiam and Schulman, 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params, subtract
from lightning_meta.algorithms.inner import InnerLoop, StateBuffers
from lightning_meta.algorithms.logged_queries import logged_query_metrics
from lightning_meta.algorithms.outer import OuterLoop
from lightning_meta.compat import attached_trainer
from lightning_meta.data.episode import Episode
from lightning_meta.errors import ConfigError

# The paper's Omniglot setting: 5 Adam(beta1=0) steps at 1e-3 on mini-batches of 10 in meta-training, 50 steps on
# the whole (5-image) support set at evaluation (supervised-reptile: --inner-iters 5 --inner-batch 10
# --learning-rate 0.001 --eval-iters 50 --eval-batch 5).
REPTILE_INNER = InnerLoop(steps=5, lr=1e-3, batch_size=10, optimizer="adam")
REPTILE_EVAL_INNER = InnerLoop(steps=50, lr=1e-3, optimizer="adam")
# Outer SGD at the meta step size 1.0, annealed linearly to 0 (--meta-step 1 --meta-step-final 0).
REPTILE_OUTER = OuterLoop(lr=1.0, lr_final=0.0, optimizer="sgd")
INNER_STATES = ("carried", "batched", "fresh")


class Reptile(MetaLearner):
    """Reptile: k inner steps on support mini-batches; the meta-gradient is theta - phi_k.

    With outer SGD at `outer.lr` epsilon (the meta step size, annealed linearly to `outer.lr_final`) the update is
    theta <- theta + epsilon * mean_i(phi_i - theta), the paper's batched Algorithm 2. The query set only feeds
    the training log.

    The inner optimizer's state (Adam's step count and second moments) follows `inner_state`:
    - "carried", as supervised-reptile: one state runs through the tasks of a meta-batch in order (so they run one
      at a time whatever `batching` says) and on into the next meta-iteration; every evaluation task starts from
      the trained state and leaves it unchanged. Under DDP each rank carries it through its own tasks and the
      ranks' states are averaged after each meta-iteration (not equal to one process, which sees every task).
    - "batched": every task of a meta-batch starts from the carried state (vmappable); the state then advances
      once, to the mean of the tasks' final states. Equal under DDP and one process. Evaluation as "carried".
    - "fresh": a new state for every task, in training and evaluation.
    The state is saved in checkpoints (buffers), so a resumed run continues it exactly.

    Its defaults are the paper's Omniglot settings. Beyond `MetaLearner`'s arguments:

    Args:
        inner_state: "batched" (the default, chosen by measurement: docs/results.md), "carried" (exactly
            supervised-reptile; the paper presets) or "fresh".

    References:
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        inner: InnerLoop = REPTILE_INNER,
        eval_inner: InnerLoop = REPTILE_EVAL_INNER,
        outer: OuterLoop = REPTILE_OUTER,
        inner_state: str = "batched",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, inner=inner, eval_inner=eval_inner, outer=outer, **kwargs)
        if inner_state not in INNER_STATES:
            raise ConfigError(f"algorithm.inner_state={inner_state!r}; choose one of {', '.join(INNER_STATES)}")
        self.inner_state = inner_state
        adapted = {k: v for k, v in self.params().items() if self.adapts(k)}
        self.carried = StateBuffers(self.inner.make_optimizer().init(adapted)) if inner_state != "fresh" else None

    def initial_state(self, loop: InnerLoop):
        if self.carried is None or loop.optimizer != self.inner.optimizer:
            return None
        return self.carried.get()

    def task_gradients(self, params: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        if self.carried is None:
            return super().task_gradients(params, batch)
        start = self.carried.get()
        if self.inner_state == "batched":
            grads, metrics, finals = self.map_tasks(lambda p, e: self._adapt(p, e, start), params, batch)
            final = tree_map(lambda s: s.mean(0), finals)
        else:  # carried: the tasks in order, each from the state the previous one left
            outs, final = [], start
            for t in range(batch.support_x.shape[0]):
                grad, metric, final = self._adapt(params, Episode(*(f[t] for f in batch)), final)
                outs.append((grad, metric))
            grads, metrics = tree_map(lambda *xs: torch.stack(xs), *outs)
        self.carried.set(self._mean_over_ranks(final))
        return grads, metrics

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        return self._adapt(params, episode, None)[:2]

    def vmap_examples(self, batch: Episode) -> int:
        """The examples one inner step passes through a task's weights: `inner.batch_size` (`eval_inner`'s in
        evaluation), at most the support set. The query set only feeds the log, once per task on logged steps, so
        `batching=auto` does not decide by it (docs/performance.md)."""
        loop = self.inner if self.training else self.eval_inner
        support = batch.support_x.shape[1]
        return support if loop.batch_size is None else min(loop.batch_size, support)

    def _adapt(self, params: Params, episode: Episode, state):
        """(theta - phi, query metrics, final inner state) of one task, its inner optimizer starting at `state`."""
        fast, state = self.inner_trajectory(params, episode.support_x, episode.support_y, self.inner, state)
        # The query set only feeds the training log: scored as one batch whatever `transductive` says (the
        # per-query non-transductive path would cost as much as the inner loop itself), on logged steps only.
        return subtract(params, fast), logged_query_metrics(self, fast, episode), state

    def _mean_over_ranks(self, state):
        if attached_trainer(self) is None or self.trainer.world_size == 1:
            return state
        return tree_map(lambda s: self.trainer.strategy.reduce(s, reduce_op="mean"), state)
