"""Sine-wave tasks: shapes, parameter ranges, and every point of a task on one sine."""

from __future__ import annotations

import math

import torch

from lightning_meta.data import SinusoidDataModule, SinusoidTasks, sample_episode


def _fit_sine(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Least squares y = a sin x + b cos x (= A sin(x - phase) with a = A cos phase, b = -A sin phase).

    Returns (A, phase, coefficients) with the phase in (-pi, pi].
    """
    basis = torch.cat([torch.sin(x), torch.cos(x)], dim=1).double()
    coef = torch.linalg.lstsq(basis, y.double()).solution[:, 0]
    a, b = coef.tolist()
    return math.hypot(a, b), math.atan2(-b, a), coef


def test_shapes():
    ep = sample_episode(SinusoidTasks(), 0, "train", 0, 5, 10)
    assert ep.support_x.shape == (5, 1) and ep.support_y.shape == (5, 1)
    assert ep.query_x.shape == (10, 1) and ep.query_y.shape == (10, 1)


def test_support_and_query_lie_on_one_sine():
    source = SinusoidTasks()
    for index in range(50):
        ep = sample_episode(source, 0, "train", index, 5, 10)
        _, _, coef = _fit_sine(ep.support_x, ep.support_y)
        basis = torch.cat([torch.sin(ep.query_x), torch.cos(ep.query_x)], dim=1).double()
        assert torch.allclose(basis @ coef, ep.query_y[:, 0].double(), atol=1e-4), index


def test_parameters_cover_their_ranges():
    source = SinusoidTasks(amplitude=(0.5, 2.0), phase=(0.0, 1.0), x_range=(-2.0, 3.0))
    amplitudes, phases, xs = [], [], []
    for index in range(400):
        ep = sample_episode(source, 1, "train", index, 4, 4)
        amplitude, phase, _ = _fit_sine(ep.support_x, ep.support_y)
        amplitudes.append(amplitude)
        phases.append(phase)
        xs.append(torch.cat([ep.support_x, ep.query_x]))
    x = torch.cat(xs)
    amplitudes, phases = torch.tensor(amplitudes), torch.tensor(phases)
    # Inside the ranges (up to float32 round-off), and spread over them (400 uniform draws).
    assert 0.5 - 1e-4 <= amplitudes.min() < 0.55 and 1.95 < amplitudes.max() <= 2.0 + 1e-4
    assert -1e-4 <= phases.min() < 0.05 and 0.95 < phases.max() <= 1.0 + 1e-4
    assert -2.0 <= x.min() < -1.95 and 2.95 < x.max() <= 3.0
    assert abs(float(amplitudes.mean()) - 1.25) < 0.1 and abs(float(x.mean()) - 0.5) < 0.1


def test_default_ranges_are_the_maml_ones():
    source = SinusoidTasks()
    assert (source.amplitude, source.phase, source.x_range) == ((0.1, 5.0), (0.0, math.pi), (-5.0, 5.0))


def test_datamodule_batches_and_splits():
    dm = SinusoidDataModule(shots=5, queries=7, meta_batch_size=3, val_episodes=4, test_episodes=4)
    dm.setup("fit")
    assert dm.task == "regression"
    val = next(iter(dm.val_dataloader()))
    test = next(iter(dm.test_dataloader()))
    assert val.support_x.shape == (3, 5, 1) and val.query_y.shape == (3, 7, 1)
    assert not torch.equal(val.support_x, test.support_x), "val and test draw from one source but must differ"
    assert torch.equal(val.support_x, next(iter(dm.val_dataloader())).support_x)
