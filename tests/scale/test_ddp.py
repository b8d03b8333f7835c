"""DDP on CPU (gloo, 2 processes) against one process with the same seed and meta-batch.

The 2-process runs are subprocesses (Lightning's DDP launcher re-runs the command line); the 1-process
reference runs in-process. Task disjointness across ranks is tested on the data module in
tests/data/test_datamodule.py (test_ddp_ranks_split_each_meta_batch, test_evaluation_shards_over_ranks).
"""

from __future__ import annotations

import json

import pytest
import torch
from scale_runs import DDP, SCRIPT, algorithm_params, load_ckpt, max_diff, overrides, run_python, scalars

from lightning_meta.config import load_config
from lightning_meta.run import train

# 4 tasks per meta-batch (2 per rank); 5 evaluation episodes, so the ranks hold 3 and 2 of them; a clip far
# below the meta-gradient norm, so clipping is active at every step (clipping each rank's own gradient before
# averaging would give other parameters). float64: in float32 the two runs differ by rounding (max abs diff
# 3.5e-7 on weights), except Conv4's conv biases, whose gradient is zero up to rounding (batch norm follows
# them) and which Reptile's inner Adam moves by +-lr per step on that noise alone (diffs up to 3e-4).
RUN = [
    "data.meta_batch_size=4", "data.val_episodes=5", "data.test_episodes=5", "trainer.max_steps=4",
    "trainer.val_check_interval=2", "algorithm.outer.grad_clip=0.01", "seed=3", "trainer.precision=64-true",
]  # fmt: skip
RTOL, NORM_RTOL = 1e-5, 1e-7  # elementwise (with atol 1e-8), and per tensor ||a - b|| / ||b|| (seen: 1.3e-9)
EVAL_TAGS = ("val/acc", "val/acc_ci95", "val/loss", "val/episodes")
# Reptile's carried inner state is equal under DDP in its batched form only (docs/scaling.md, "Several processes"): with
# "carried" each rank threads the state through its own tasks, one process through all of them.
EQUAL = {"reptile": ["algorithm.inner_state=batched"]}


def _single(algorithm: str, shrink: list[str], out, *extra: str) -> dict:
    """1-process run in this process; returns its test metrics."""
    return train(load_config(overrides(algorithm, shrink, out, *RUN, *EQUAL.get(algorithm, []), *extra)))


def _assert_params_close(a: dict, b: dict) -> tuple[float, float]:
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=RTOL, atol=1e-8, msg=lambda m, key=key: f"{key}: {m}")
        # Reptile's carried Adam moments of a conv bias before batch norm are squares of rounding noise (~1e-30):
        # their relative difference means nothing, so tensors that small are held to the absolute bound alone.
        assert float((a[key] - b[key]).norm()) <= NORM_RTOL * float(b[key].norm()) + 1e-20, key
    return max_diff(a, b)


def _assert_eval_equal(two, one) -> None:
    """Validation and test figures of the 2-process run (rank 0's logs, gathered over ranks) equal one's."""
    test_two = json.loads((two / "test_metrics.json").read_text())
    test_one = json.loads((one / "test_metrics.json").read_text())
    assert test_two.keys() == test_one.keys() and test_one["test/episodes"] == 5
    for key in test_one:
        assert test_two[key] == pytest.approx(test_one[key], rel=1e-5, abs=1e-6), key
    val_two, val_one = scalars(two), scalars(one)
    for tag in EVAL_TAGS:
        assert sorted(val_one[tag]) == sorted(val_two[tag]) and len(val_one[tag]) == 2, tag
        for step, value in val_one[tag].items():
            assert val_two[tag][step] == pytest.approx(value, rel=1e-5, abs=1e-6), (tag, step)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", algorithm_params())
def test_two_processes_match_one(algorithm, shrink, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _single(algorithm, shrink, one)
    run_python([str(SCRIPT), *overrides(algorithm, shrink, two, *RUN, *EQUAL.get(algorithm, []), *DDP)])

    ckpt_one, ckpt_two = load_ckpt(one / "checkpoints/last.ckpt"), load_ckpt(two / "checkpoints/last.ckpt")
    assert ckpt_one["global_step"] == ckpt_two["global_step"] == 4
    diffs = _assert_params_close(ckpt_two["state_dict"], ckpt_one["state_dict"])
    print(f"{algorithm}: 2 vs 1 process, max abs diff {diffs[0]:.3g}, max rel diff {diffs[1]:.3g}")
    # The optimizer states (Adam moments, step counts, learning rates) agree as well.
    state_one, state_two = ckpt_one["optimizer_states"][0], ckpt_two["optimizer_states"][0]
    assert state_one["param_groups"] == state_two["param_groups"]
    for p, slots in state_one["state"].items():
        for name, value in slots.items():
            torch.testing.assert_close(state_two["state"][p][name], value, rtol=RTOL, atol=1e-8)

    # Each rank ends with the same parameters, bit for bit, and they are what rank 0 checkpointed.
    rank0, rank1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() == ckpt_two["state_dict"].keys()
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], ckpt_two["state_dict"][k]) for k in rank0)

    _assert_eval_equal(two, one)


@pytest.mark.slow
def test_train_py_ddp_resumes_exactly(shrink, tmp_path):
    """`python train.py trainer.strategy=ddp ...` stopped at step 3 (rank 0 gets SIGTERM) and resumed with
    ckpt_path ends where one uninterrupted process ends."""
    one, two = tmp_path / "one", tmp_path / "two"
    _single("reptile", shrink, one, "trainer.max_steps=6", "trainer.val_check_interval=4")
    args = overrides("reptile", shrink, two, *RUN, *EQUAL["reptile"], *DDP, "trainer.max_steps=6",
                     "trainer.val_check_interval=4")  # fmt: skip
    run_python([str(SCRIPT), *args], env={"STOP_AT": "3"}, status=143)  # stopped by SIGTERM: 128 + 15
    stopped = load_ckpt(two / "checkpoints/last.ckpt")
    assert stopped["global_step"] == 3 and not (two / "test_metrics.json").exists()

    run_python(["train.py", *args, f"ckpt_path={two / 'checkpoints/last.ckpt'}"])
    ckpt_one, ckpt_two = load_ckpt(one / "checkpoints/last.ckpt"), load_ckpt(two / "checkpoints/last.ckpt")
    assert ckpt_one["global_step"] == ckpt_two["global_step"] == 6
    diffs = _assert_params_close(ckpt_two["state_dict"], ckpt_one["state_dict"])
    print(f"reptile: 2-process resumed vs 1 process, max abs diff {diffs[0]:.3g}, max rel diff {diffs[1]:.3g}")
    assert ckpt_one["lr_schedulers"] == ckpt_two["lr_schedulers"]  # the annealed meta step size went on
    assert [p.name for p in (two / "checkpoints").glob("last*")] == ["last.ckpt"]  # no last-v1.ckpt
    test_one = json.loads((one / "test_metrics.json").read_text())
    test_two = json.loads((two / "test_metrics.json").read_text())
    assert test_two == pytest.approx(test_one, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_carried_inner_state_is_averaged_over_ranks(shrink, tmp_path):
    """With Reptile's exact carried state each rank carries it through its own tasks; after every meta-iteration
    the ranks' states are averaged, so both ranks hold the same weights and the same state, bit for bit."""
    two = tmp_path / "two"
    run_python([str(SCRIPT), *overrides("reptile", shrink, two, *RUN, "algorithm.inner_state=carried", *DDP)])
    rank0, rank1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    carried = [k for k in rank0 if k.startswith("carried.")]
    assert carried and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # 4 meta-iterations of 2 tasks per rank, 5 inner steps each: the step count the ranks carried
    assert float(rank0["carried.s0"]) == 4 * 2 * 5
