"""The 95 % interval of the test protocol and the per-episode collection behind it."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_meta.metrics import EpisodeMetrics, mean_ci95


def test_ci95_matches_hand_computation():
    # 0, 1, 0, 1: mean 0.5, population std 0.5, n = 4 -> 1.96 * 0.5 / 2 = 0.49.
    assert mean_ci95(torch.tensor([0.0, 1.0, 0.0, 1.0])) == pytest.approx((0.5, 0.49), abs=1e-12)
    # 1..5: mean 3, population variance 2 -> 1.96 * sqrt(2) / sqrt(5) = 1.96 * sqrt(0.4).
    assert mean_ci95(torch.arange(1.0, 6.0)) == pytest.approx((3.0, 1.96 * math.sqrt(0.4)), abs=1e-12)


def test_ci95_of_one_episode_is_zero_and_of_none_is_nan():
    assert mean_ci95(torch.tensor([0.7])) == pytest.approx((0.7, 0.0))
    assert all(math.isnan(v) for v in mean_ci95(torch.tensor([])))


def test_episode_metrics_summarise_curve_points_per_step():
    metrics = EpisodeMetrics("regression", curve_steps=(1, 5))
    metrics.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([[4.0, 2.0], [6.0, 3.0]]))
    metrics.update(torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([[8.0, 4.0]]))
    values = metrics.compute_and_reset("test")
    assert values["test/episodes"] == 3.0
    assert values["test/mse"] == pytest.approx(2.0)
    assert values["test/mse_step1"] == pytest.approx(6.0)
    assert values["test/mse_step5"] == pytest.approx(3.0)
    # population std of 4, 6, 8 is sqrt(8/3)
    assert values["test/mse_step1_ci95"] == pytest.approx(1.96 * math.sqrt(8 / 3) / math.sqrt(3))
    assert "test/loss" not in values  # regression: the loss is the MSE itself
    assert metrics.compute_and_reset("test") == {}  # reset after compute: the next evaluation starts afresh


def test_episode_metrics_without_curve_log_no_step_keys():
    metrics = EpisodeMetrics("classification")
    metrics.update(torch.tensor([0.5, 1.0]), torch.tensor([0.7, 0.1]))
    values = metrics.compute_and_reset("val")
    assert sorted(values) == ["val/acc", "val/acc_ci95", "val/episodes", "val/loss", "val/nonfinite_episodes"]
    assert values["val/loss"] == pytest.approx(0.4)


def test_nonfinite_episodes_are_counted_and_left_out_of_the_figures():
    """A diverged episode (NaN or inf loss) is counted, never silently dropped, and does not poison the mean; its
    accuracy (finite even on NaN logits) is left out with it."""
    metrics = EpisodeMetrics("classification", curve_steps=(1,))
    nan, inf = float("nan"), float("inf")
    metrics.update(torch.tensor([1.0, 0.2, 0.5]), torch.tensor([0.1, nan, 0.3]), torch.tensor([[1.0], [0.2], [nan]]))
    metrics.update(torch.tensor([0.0]), torch.tensor([inf]), torch.tensor([[0.0]]))
    values = metrics.compute_and_reset("test")
    assert values["test/episodes"] == 4 and values["test/nonfinite_episodes"] == 2
    assert values["test/acc"] == pytest.approx(0.75) and values["test/loss"] == pytest.approx(0.2)
    assert values["test/acc_step1"] == pytest.approx(1.0)  # episode 3's curve point is NaN: left out too


def test_all_episodes_nonfinite_gives_nan_figures_not_a_crash():
    metrics = EpisodeMetrics("regression")
    metrics.update(torch.tensor([float("nan")] * 2), torch.tensor([float("nan")] * 2))
    values = metrics.compute_and_reset("test")
    assert values["test/nonfinite_episodes"] == 2 and math.isnan(values["test/mse"])
