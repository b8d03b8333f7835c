"""The outer loop's schedule: `outer.lr_final` annealed over meta-iterations or over trainer.max_time."""

from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.callbacks import Timer

from lightning_meta.algorithms.outer import OuterLoop
from lightning_meta.errors import ConfigError


class _Clock(Timer):
    """A Timer whose training time is set by the test: `elapsed` seconds spent of `duration`."""

    def __init__(self, duration: float) -> None:
        super().__init__(duration={"seconds": duration})
        self.total, self.elapsed = duration, 0.0

    def time_elapsed(self, stage="train") -> float:
        return self.elapsed

    def time_remaining(self, stage="train") -> float:
        return self.total - self.elapsed


def _trainer(*callbacks, world_size=1, max_steps=1000):
    return SimpleNamespace(callbacks=list(callbacks), world_size=world_size, max_steps=max_steps)


def test_the_step_size_anneals_over_the_time_budget():
    """With anneal_over=time the step size at each meta-iteration is lr + (lr_final - lr) * (time spent / max_time),
    however many meta-iterations the time held, and stays at lr_final once the budget is spent."""
    clock = _Clock(duration=200.0)
    outer = OuterLoop(lr=1.0, lr_final=0.2, optimizer="sgd", anneal_over="time")
    weight = torch.nn.Parameter(torch.zeros(2))
    config = outer.configure([weight], outer.progress(_trainer(clock, max_steps=10**9)))
    opt, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for elapsed in (0.0, 50.0, 150.0, 200.0, 260.0):
        clock.elapsed = elapsed
        scheduler.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([1.0, 0.8, 0.4, 0.2, 0.2])


def test_the_step_size_anneals_over_max_steps_by_default():
    outer = OuterLoop(lr=1.0, lr_final=0.0, optimizer="sgd")
    progress = outer.progress(_trainer(max_steps=8))
    assert [progress(s) for s in (0, 2, 8)] == [0.0, 0.25, 1.0]


@pytest.mark.parametrize(
    ("callbacks", "world_size", "message"),
    [
        ((), 1, "algorithm.outer.anneal_over=time anneals over trainer.max_time, which is not set; give "
                "trainer.max_time (e.g. 00:00:27:00), or algorithm.outer.anneal_over=steps"),
        ((_Clock(60.0),), 2, "algorithm.outer.anneal_over=time under DDP would give each process its own step size; "
                             "use algorithm.outer.anneal_over=steps with trainer.max_steps"),
    ],
    ids=["no-max-time", "ddp"],
)
def test_a_time_annealing_the_trainer_cannot_give_is_refused(callbacks, world_size, message):
    outer = OuterLoop(lr_final=0.0, anneal_over="time")
    with pytest.raises(ConfigError) as error:
        outer.progress(_trainer(*callbacks, world_size=world_size))
    assert str(error.value) == message


def test_an_unknown_annealing_length_is_refused():
    with pytest.raises(ConfigError, match=r"^algorithm.outer.anneal_over='epochs'; use steps or time$"):
        OuterLoop(anneal_over="epochs").check("outer")
