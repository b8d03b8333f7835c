"""TensorBoard review: curve and episode images at each validation and test, curve scalars, and the HParams
tab (the flattened config against the test metrics), read back from the event files."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.review import EvaluationReview, image_grid


def events(run) -> EventAccumulator:
    accumulator = EventAccumulator(str(run.out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    return accumulator.Reload()


def image_steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Images(tag)]


def decoded(accumulator: EventAccumulator, tag: str) -> Image.Image:
    event = accumulator.Images(tag)[-1]
    image = Image.open(io.BytesIO(event.encoded_image_string))
    assert image.size == (event.width, event.height)
    return image


@pytest.mark.parametrize("run_name", ["omniglot_run", "sine_run"])
def test_curve_and_episode_images_are_logged_at_each_validation_and_test(run_name, request):
    run = request.getfixturevalue(run_name)
    accumulator = events(run)
    # validation after meta-iterations 2 and 4 (val_check_interval=2, max_steps=4); the test after the fit
    for tag in ("val/adaptation_curve", "val/episode"):
        assert image_steps(accumulator, tag) == [2, 4]
    for tag in ("test/adaptation_curve", "test/episode"):
        assert image_steps(accumulator, tag) == [4]
    for tag in ("val/adaptation_curve", "val/episode", "test/episode"):
        width, height = decoded(accumulator, tag).size
        assert width >= 300 and height >= 200


def test_curve_scalars_are_logged_for_validation_and_test(omniglot_run, sine_run):
    scalars = events(omniglot_run).Tags()["scalars"]
    assert {
        "val/acc_step0",
        "val/acc_step1",
        "val/acc_step1_ci95",
        "test/acc_step0",
        "test/acc_step1",
    } <= set(scalars)
    sine = events(sine_run)
    for k in (1, 5, 10):
        assert len(sine.Scalars(f"val/mse_step{k}")) == 2  # two validations (Lightning logs them at steps 1, 3)
        logged = {e.value for e in sine.Scalars(f"test/mse_step{k}")}  # by the test, again for the HParams tab
        assert logged == {sine_run.metrics[f"test/mse_step{k}"]}


def hparams(run) -> tuple[dict, list[str]]:
    content = events(run).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {
        k: v.number_value if v.HasField("number_value") else v.string_value
        for k, v in start.session_start_info.hparams.items()
    }
    return values, [info.name.tag for info in experiment.experiment.metric_infos]


def test_hparams_tab_compares_runs_by_flattened_config_and_test_metrics(omniglot_run):
    values, metric_tags = hparams(omniglot_run)
    assert values["data/ways"] == 5 and values["data/shots"] == 1 and values["model/hidden"] == 8
    assert values["algorithm/eval_inner/steps"] == 2 and values["selection/algorithm"] == "reptile"
    assert values["algorithm/eval_curve_steps"] == "[0, 1]"  # lists as text; None as "None"
    assert not any(key.startswith("config/") for key in values)  # one entry per setting, not two
    assert set(metric_tags) == {k for k in omniglot_run.metrics if k.startswith("test/")}
    test_acc = events(omniglot_run).Scalars("test/acc")
    assert {e.step for e in test_acc} == {4}  # the HParams metrics sit at the test's step, not at step 0
    assert test_acc[-1].value == pytest.approx(omniglot_run.metrics["test/acc"])


def test_image_grid_places_each_image_in_its_framed_cell():
    images = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 1, 4, 4)
    border = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    grid = image_grid(images, columns=2, frame=2, border=border)
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1, 3)  # cells of 4 + 2*2 + 1 pixels
    scaled = images / images.max()
    top, left = 0 * 9 + 1, 1 * 9 + 1  # image 1: first row, second column
    torch.testing.assert_close(grid[top + 2 : top + 6, left + 2 : left + 6, 0], scaled[1, 0])
    assert torch.equal(grid[top, left], border[1]) and torch.equal(grid[top + 7, left + 7], border[1])
    assert torch.equal(grid[10, 1], border[2])  # image 2 starts the second row
    assert torch.equal(grid[0, 0], torch.ones(3))  # white between cells
    assert torch.equal(grid[10, 10], torch.ones(3))  # the unused fourth cell stays white


class _Learner:
    task, eval_inner, eval_curve_steps = "regression", InnerLoop(steps=10), (1, 5)


def test_curve_points_pair_each_step_with_its_metric_and_interval():
    logged = {
        "val/mse": 0.5,
        "val/mse_ci95": 0.1,
        "val/mse_step1": 2.0,
        "val/mse_step1_ci95": 0.3,
        "val/mse_step5": 1.0,
        "val/mse_step5_ci95": 0.2,
        "test/mse": 9.0,
    }
    points = EvaluationReview.curve_points(logged, _Learner(), "val")
    assert points == {1: (2.0, 0.3), 5: (1.0, 0.2), 10: (0.5, 0.1)}
