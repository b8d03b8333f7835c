"""A real `kill -9` mid-run: `last.ckpt`, written every N steps to a temporary file and renamed, is loadable and at
most N steps old, and resuming from it finishes the run where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from scale_runs import REPO, load_ckpt, run_python

from lightning_meta.config import load_config
from lightning_meta.run import train

EVERY = 7
# ~10 ms a step: 300 steps leave time to kill mid-run. Validation only at the end, so no periodic save falls on a
# validation step.
SINE = [
    "data=sinusoid", "model.hidden=[8]", "trainer.max_steps=300", "trainer.val_check_interval=300",
    "data.val_episodes=2", "data.test_episodes=2", "data.meta_batch_size=2", "algorithm.eval_inner.steps=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    f"callbacks.last_checkpoint.every_n_steps={EVERY}", "callbacks.last_checkpoint.every_minutes=null",
]  # fmt: skip


def _step(path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_kill_9_then_resume_finishes_the_run(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(load_config([*SINE, f"output_dir={straight}"]))
    last = run / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *SINE, f"output_dir={run}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, step = time.monotonic() + 180, None
    while proc.poll() is None and time.monotonic() < deadline:
        step = _step(last)  # every read must succeed: the file is replaced whole, never seen half-written
        if step is not None and step >= 8 * EVERY:
            break
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler, no final save
    proc.wait(timeout=60)
    assert proc.returncode == -9, "the run ended before it was killed; raise trainer.max_steps"

    killed = load_ckpt(last)
    assert killed["global_step"] % EVERY == 0 and 8 * EVERY <= killed["global_step"] < 300
    print(f"killed with last.ckpt at step {killed['global_step']}")
    assert not (run / "test_metrics.json").exists()

    run_python(["train.py", *SINE, f"ckpt_path={last}"])
    final, reference = load_ckpt(last), load_ckpt(straight / "checkpoints" / "last.ckpt")
    assert final["global_step"] == reference["global_step"] == 300
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-6, atol=1e-9)
    assert final["lr_schedulers"] == reference["lr_schedulers"]
    test_run = json.loads((run / "test_metrics.json").read_text())
    assert test_run == pytest.approx(json.loads((straight / "test_metrics.json").read_text()), rel=1e-6)
