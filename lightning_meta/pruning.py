"""The search's pruner for trials that report at different steps: `BudgetMedianPruner` (pruner.unit=seconds).

Imported only by a search (it imports Optuna)."""

from __future__ import annotations

import statistics
from typing import Any

import optuna
from optuna.trial import TrialState


class BudgetMedianPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose best value so far is worse than the median of the complete trials' best values at the
    same budget: each trial's best over its reports at steps up to this trial's last one.

    Optuna's MedianPruner compares reports made at one and the same step. Time-budgeted trials report at the
    seconds of training their validations happened to fall on, so no two share a step; comparing the best value
    reached within the same number of seconds is what ranks them, and it is what a trial stopped by
    `trainer.max_time` is judged by in the end.

    Args:
        n_startup_trials: complete trials (each with a report within the budget) before any pruning.
        n_warmup_steps: steps (seconds) a trial runs before it can be pruned.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be 0 or more")
        self.n_startup_trials, self.n_warmup_steps = int(n_startup_trials), int(n_warmup_steps)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        others = [best for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if (best := best_within(t.intermediate_values, step, pick)) is not None]  # fmt: skip
        if len(others) < max(self.n_startup_trials, 1):
            return False
        mine, median = best_within(trial.intermediate_values, step, pick), statistics.median(others)
        return mine != median and pick(mine, median) == median  # strictly worse than the median


def best_within(values: dict[int, float], step: int, pick: Any) -> float | None:
    """The best (`pick`: max or min) of `values` reported at steps up to `step`; None when there is none."""
    within = [v for s, v in values.items() if s <= step]
    return pick(within) if within else None
