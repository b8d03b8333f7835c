"""Query scores for the training log of the learners whose meta-gradient does not use the query set (Reptile and
the gradient-combination study): their queries are scored only on the training steps whose log is written."""

from __future__ import annotations

from torch import Tensor

from lightning_meta.algorithms.functional import Params
from lightning_meta.compat import attached_trainer, should_update_logs
from lightning_meta.data.episode import Episode


def logged_query_metrics(learner, fast: Params, episode: Episode) -> dict[str, Tensor]:
    """Query scores of adapted weights `fast` for the training log alone, as one batch (transductive): {} on a
    training step whose log Lightning will not write (on-step values are written every
    `trainer.log_every_n_steps` steps), since scoring costs a forward pass per task. Always taken outside a
    Trainer's fit (`learner.task_gradients` called by hand, evaluation)."""
    trainer = attached_trainer(learner)
    if trainer is not None and trainer.training and not should_update_logs(trainer):
        return {}
    return learner.query_metrics(fast, episode, transductive=True)
