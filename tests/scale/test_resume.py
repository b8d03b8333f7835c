"""Exact resume: a run stopped at step t (SIGTERM) and resumed with ckpt_path ends where the uninterrupted run
ends -- parameters, optimizer and scheduler state, step counters and every logged value."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scale_runs import REPO, StopAt, algorithm_params, load_ckpt, overrides, run_python, scalars

from lightning_meta.config import ConfigError, load_config
from lightning_meta.run import train

# Validation at steps 3 and 6. A stop at step 4 falls between them, mid-epoch; one at step 3 on a validation.
RUN = ["trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1"]
STOPS = [pytest.param(*p.values, 4, marks=p.marks, id=f"{p.values[0]}-stop4") for p in algorithm_params()]
STOPS.append(pytest.param("reptile", 3, id="reptile-stop3-on-a-validation-step"))


def _without_output_dir(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("output_dir=")]


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "test_metrics.json").read_text())


def _assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same training state, bit for bit."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["param_groups"] == opt_b["param_groups"] and opt_a["state"].keys() == opt_b["state"].keys()
    for p, slots in opt_a["state"].items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b["state"][p][n])) for n, v in slots.items())
    assert a["lr_schedulers"] == b["lr_schedulers"]
    loops_a, loops_b = a["loops"]["fit_loop"], b["loops"]["fit_loop"]
    assert loops_a["epoch_loop.state_dict"] == loops_b["epoch_loop.state_dict"]  # logging step counter
    steps = "epoch_loop.manual_optimization.optim_step_progress"
    assert loops_a[steps]["total"] == loops_b[steps]["total"]


@pytest.mark.parametrize("algorithm, stop", STOPS)
def test_stopped_and_resumed_run_equals_straight_run(algorithm, stop, shrink, tmp_path):
    _check_resume(algorithm, stop, shrink, tmp_path)


def test_exactly_carried_inner_state_resumes_bit_for_bit(shrink, tmp_path):
    """Reptile's supervised-reptile form (state threaded through the tasks in order) lives in the checkpoint too."""
    _check_resume("reptile", 4, shrink, tmp_path, "algorithm.inner_state=carried")
    state = load_ckpt(tmp_path / "parted" / "checkpoints" / "last.ckpt")["state_dict"]
    assert float(state["carried.s0"]) == 6 * 2 * 5  # 6 meta-iterations of 2 tasks, 5 Adam steps each


def _check_resume(algorithm: str, stop: int, shrink: list[str], tmp_path: Path, *extra: str) -> None:
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    train(load_config(overrides(algorithm, shrink, straight, *RUN, *extra)))
    args = overrides(algorithm, shrink, parted, *RUN, *extra)
    assert train(load_config(args), extra_callbacks=[StopAt(stop)]) == {}  # stopped: no meta-test
    stopped = load_ckpt(parted / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == stop and not (parted / "test_metrics.json").exists()

    # Resuming needs only ckpt_path: output_dir defaults to the checkpoint's run directory.
    train(load_config([*_without_output_dir(args), f"ckpt_path={parted / 'checkpoints' / 'last.ckpt'}"]))
    _assert_same_state(load_ckpt(parted / "checkpoints" / "last.ckpt"), load_ckpt(straight / "checkpoints/last.ckpt"))
    # Same logging steps, same values: the same task stream, and no extra validation at the stop.
    logged_straight, logged_parted = scalars(straight), scalars(parted)
    for tag in ("train/query_loss", "train/lr", "val/acc", "val/acc_ci95"):
        assert logged_parted[tag] == logged_straight[tag], tag
    assert sorted(logged_straight["train/query_loss"]) == list(range(6)) and sorted(logged_straight["val/acc"]) == [
        2,
        5,
    ]
    assert _test_metrics(parted) == _test_metrics(straight)
    assert [p.name for p in (parted / "checkpoints").glob("last*")] == ["last.ckpt"]  # no last-v1.ckpt


def test_last_checkpoint_is_written_at_the_end_of_a_run(shrink, tmp_path):
    """Lightning 2.6 rewrites last.ckpt only with a top-k save; train.py's last.ckpt is still the final step.
    max_steps=5 is no validation step, and a weights_only load proves the checkpoint holds plain containers."""
    out = tmp_path / "run"
    train(load_config(overrides("reptile", shrink, out, "trainer.max_steps=5", "trainer.val_check_interval=2")))
    ckpt = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 5 and ckpt["hyper_parameters"]["config"]["trainer"]["max_steps"] == 5


def test_fresh_run_refuses_a_directory_with_checkpoints(shrink, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=rf"already holds checkpoints; resume with ckpt_path={last} or choose"):
        train(load_config(shrink))


# A sine run long enough (~10 ms a step) for SIGTERM, sent after the first validation, to land mid-training.
SINE = [
    "data=sinusoid", "model.hidden=[8]", "trainer.max_steps=200", "trainer.val_check_interval=20",
    "data.val_episodes=2", "data.test_episodes=2", "data.meta_batch_size=2", "algorithm.inner.steps=1",
    "algorithm.eval_inner.steps=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


def _sigterm_after_first_validation(args: list[str], ckpt_dir: Path) -> str:
    """Start `python train.py args`, send SIGTERM once validation wrote its first checkpoint; returns the log."""
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not any(ckpt_dir.glob("best-*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, log[-4000:]  # 128 + SIGTERM, as a shell reports it, after the resume line
    return log


@pytest.mark.slow
def test_sigterm_stops_with_a_resumable_checkpoint(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(load_config([*SINE, f"output_dir={straight}"]))
    log = _sigterm_after_first_validation([*SINE, f"output_dir={run}"], run / "checkpoints")
    stopped = load_ckpt(run / "checkpoints" / "last.ckpt")
    step = stopped["global_step"]
    assert 20 <= step < 200, "the run ended before SIGTERM arrived; raise trainer.max_steps"
    print(f"SIGTERM after the validation at step 20 stopped the run at step {step}")
    assert f"Stopped on request at step {step}; resume with ckpt_path=" in log
    assert not (run / "test_metrics.json").exists()  # a stopped run does not meta-test

    run_python(["train.py", *SINE, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    final, reference = load_ckpt(run / "checkpoints" / "last.ckpt"), load_ckpt(straight / "checkpoints/last.ckpt")
    assert final["global_step"] == reference["global_step"] == 200
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-6, atol=1e-9)
    assert final["lr_schedulers"] == reference["lr_schedulers"]
    assert _test_metrics(run) == pytest.approx(_test_metrics(straight), rel=1e-6)
