"""Ctrl-C and SIGTERM: a stopped run saves last.ckpt, says how to resume and exits as a shell reports a process that
signal ended (130, 143); a second signal during the save waits for the file to be renamed into place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_meta.callbacks import LastCheckpoint, SignalExit

REPO = Path(__file__).resolve().parent.parent
# ~10 ms a step: far more steps than the test waits for; last.ckpt every 5 steps, so one is there before the signals.
SINE = [
    "data=sinusoid", "algorithm=maml", "model.hidden=[8]", "trainer.max_steps=100000",
    "trainer.val_check_interval=100000", "data.val_episodes=2", "data.test_episodes=2", "data.meta_batch_size=2",
    "algorithm.eval_inner.steps=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "callbacks.last_checkpoint.every_n_steps=5", "callbacks.last_checkpoint.every_minutes=null",
]  # fmt: skip


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_two_signals_50ms_apart_leave_a_loadable_checkpoint_and_exit_128_plus_the_signal(sig, status, tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *SINE, f"output_dir={run}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # mid-run, between periodic saves
    proc.send_signal(sig)
    time.sleep(0.05)
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == status, log[-4000:]
    assert "Traceback" not in log and "Detected KeyboardInterrupt" not in log, log[-4000:]
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 5 <= step < 100000
    assert f"resume with ckpt_path={last}" in log
    assert not (run / "checkpoints" / "last.ckpt.tmp").exists() and not (run / "test_metrics.json").exists()


class _Saving:
    """Stands in for the trainer in `LastCheckpoint.save`: the save delivers a signal half-way through writing."""

    def __init__(self, keeper: LastCheckpoint, during: list[int]) -> None:
        self.keeper, self.during = keeper, during
        self.is_global_zero, self.global_step = True, 7
        self.lightning_module = torch.nn.Linear(1, 1)

    def save_checkpoint(self, path) -> None:
        for signum in self.during:
            self.keeper._request(signum, None)  # as the handler runs between two bytecodes of the write
        torch.save({"global_step": self.global_step}, path)


def test_a_second_signal_during_a_save_waits_for_the_rename(tmp_path):
    keeper = LastCheckpoint(tmp_path / "last.ckpt")
    keeper._request(signal.SIGINT, None)  # the first: stop after this step
    with pytest.raises(SignalExit) as stop:  # a periodic save was running when the second came
        keeper.save(_Saving(keeper, [signal.SIGINT]))
    assert stop.value.code == 130
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 7  # renamed into place first
    assert not (tmp_path / "last.ckpt.tmp").exists()


def test_a_second_signal_mid_step_interrupts_and_one_after_the_stop_is_ignored(tmp_path):
    keeper = LastCheckpoint(tmp_path / "last.ckpt")
    keeper._request(signal.SIGTERM, None)
    with pytest.raises(SignalExit) as stop:
        keeper._request(signal.SIGTERM, None)  # the step still runs: interrupt at once
    assert stop.value.code == 143
    keeper._stopping = True  # the step is done, the stop decided: its save must not be cut short
    keeper.save(_Saving(keeper, [signal.SIGTERM, signal.SIGINT]))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 7
