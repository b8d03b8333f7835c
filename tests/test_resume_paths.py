"""Resume, overwrites and report paths: a resumed run uses only its own files, never the package folder as a run
directory, never mixes into another run's folder, keeps its config.yaml until the resume has saved a checkpoint, and
eval.py checks its json_path before evaluating and reports a failed write as one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

import lightning_meta
from lightning_meta import evaluate
from lightning_meta.build import resolve_output_dir
from lightning_meta.callbacks import rebase_checkpoint_state
from lightning_meta.config import load_config
from lightning_meta.errors import ConfigError
from lightning_meta.run import main, train

PACKAGE = Path(lightning_meta.__file__).resolve().parent
SHIPPED = PACKAGE / "demo" / "omniglot_5way.ckpt"
# The brief's T, shrunk further, with a validation (and so a best-<step>.ckpt) every 3 steps.
SINE = [
    "data=sinusoid", "algorithm=maml", "model.hidden=[8]", "trainer.max_steps=3", "trainer.val_check_interval=3",
    "data.val_episodes=2", "data.test_episodes=4", "data.meta_batch_size=2", "algorithm.eval_inner.steps=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture
def tested(monkeypatch) -> list:
    """The ckpt_path every `Trainer.test` call of the test gets."""
    seen = []
    original = pl.Trainer.test

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("ckpt_path"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "test", spy)
    return seen


# ----------------------------------------------------------------- 1. a copied or moved run
def test_resuming_a_copied_run_uses_only_its_own_checkpoints(tmp_path, snapshot, tested):
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    train(load_config([*SINE, f"output_dir={run_a}"]))
    shutil.copytree(run_a, run_b)
    before = snapshot(run_a)
    tested.clear()
    train(load_config([*SINE, "trainer.max_steps=6", f"ckpt_path={run_b / 'checkpoints' / 'last.ckpt'}"]))
    assert len(tested) == 1 and Path(tested[0]).parent == run_b / "checkpoints", tested
    assert snapshot(run_a) == before  # runA's best-3.ckpt neither tested nor deleted as the old best
    assert torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_resume_into_another_output_dir_drops_the_saved_best(tmp_path, snapshot, tested):
    run_a, run_c = tmp_path / "runA", tmp_path / "runC"
    train(load_config([*SINE, f"output_dir={run_a}"]))
    before = snapshot(run_a)
    tested.clear()
    train(load_config([*SINE, "trainer.max_steps=6", f"ckpt_path={run_a / 'checkpoints' / 'last.ckpt'}",
                       f"output_dir={run_c}"]))  # fmt: skip
    assert len(tested) == 1 and Path(tested[0]).parent == run_c / "checkpoints", tested
    assert snapshot(run_a) == before


def test_rebase_keeps_files_of_this_run_and_drops_the_rest(tmp_path):
    here = tmp_path / "runB" / "checkpoints"
    here.mkdir(parents=True)
    (here / "best-9.ckpt").write_bytes(b"x")
    old = "/elsewhere/runA/checkpoints"
    state = {"monitor": "val/mse", "dirpath": old, "best_model_path": f"{old}/best-9.ckpt", "best_model_score": 0.5,
             "best_k_models": {f"{old}/best-9.ckpt": 0.5}, "kth_best_model_path": f"{old}/best-9.ckpt",
             "last_model_path": ""}  # fmt: skip
    moved = rebase_checkpoint_state(state, str(here))
    assert moved["best_model_path"] == str(here / "best-9.ckpt") and moved["dirpath"] == str(here)
    assert moved["best_k_models"] == {str(here / "best-9.ckpt"): 0.5} and moved["best_model_score"] == 0.5
    (here / "best-9.ckpt").unlink()  # not in this run (deleted, or a resume into another output_dir)
    dropped = rebase_checkpoint_state(state, str(here))
    assert dropped == {"monitor": "val/mse", "dirpath": str(here), "best_model_path": "", "best_model_score": None}
    outside = {**state, "best_model_path": "/tmp/other/best-9.ckpt"}  # not under the saved dirpath either
    assert rebase_checkpoint_state(outside, str(here))["best_model_path"] == ""


# ----------------------------------------------------------------- 2. a checkpoint shipped with the package
def test_a_shipped_checkpoint_needs_an_output_dir(snapshot, capsys):
    before = snapshot(PACKAGE)
    status = main(["experiment=demo_omniglot", "trainer.max_steps=1003", f"ckpt_path={SHIPPED}"])
    assert status == 2
    line = _error_line(capsys)
    assert "ships with the package lightning_meta" in line and "output_dir=" in line
    status = main(["data=sinusoid", f"output_dir={PACKAGE / 'demo' / 'run'}"])
    assert status == 2 and "inside the installed package" in _error_line(capsys)
    assert snapshot(PACKAGE) == before


def test_the_shipped_checkpoint_trains_on_in_a_new_output_dir(shrink, tmp_path, snapshot, tested):
    """A copy of the shipped file (its saved best path, /tmp/demo_final/..., is on no machine): training on from it
    into a new output_dir tests this run's own weights or best checkpoint, never the saved path."""
    copy = tmp_path / "copy" / SHIPPED.name
    copy.parent.mkdir()
    shutil.copy(SHIPPED, copy)
    out = tmp_path / "finetuned"
    root = next(a for a in shrink if a.startswith("data.root="))
    args = ["experiment=demo_omniglot", root, "trainer.max_steps=1002", "trainer.val_check_interval=2",
            "data.meta_batch_size=2", "data.val_episodes=2", "data.test_episodes=2", "data.eval_batch_size=2",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"ckpt_path={copy}",
            f"output_dir={out}"]  # fmt: skip
    metrics = train(load_config(args))
    assert "test/acc" in metrics and (out / "test_metrics.json").is_file()
    assert all(path is None or Path(path).parent == out / "checkpoints" for path in tested), tested
    assert sorted(p.name for p in copy.parent.iterdir()) == [SHIPPED.name]


# ----------------------------------------------------------------- 3. a folder holding another run's files
def test_a_fresh_run_refuses_a_folder_with_another_runs_files(tmp_path, snapshot, capsys):
    out = tmp_path / "failed"
    (out / "tensorboard").mkdir(parents=True)
    (out / "config.yaml").write_text("seed: 1\n")
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"events")
    before = snapshot(out)
    assert main([*SINE, f"output_dir={out}"]) == 2
    line = _error_line(capsys)
    assert "holds another run's files (config.yaml, tensorboard)" in line and "choose another output_dir" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("held", [[], ["job.json"], ["main.log"]], ids=["empty", "sweep-record", "hydra-log"])
def test_a_fresh_run_accepts_an_empty_folder_or_one_with_a_jobs_record(held, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    for name in held:
        (out / name).write_text("{}")
    assert resolve_output_dir(load_config([*SINE, f"output_dir={out}"])) == out


def test_a_resume_into_a_folder_with_another_runs_files_is_refused(tmp_path):
    run_a, other = tmp_path / "runA", tmp_path / "other"
    train(load_config([*SINE, f"output_dir={run_a}"]))
    other.mkdir()
    (other / "config.yaml").write_text("seed: 1\n")
    cfg = load_config([*SINE, f"ckpt_path={run_a / 'checkpoints' / 'last.ckpt'}", f"output_dir={other}"])
    with pytest.raises(ConfigError, match="holds another run's files"):
        resolve_output_dir(cfg)
    assert resolve_output_dir(load_config([*SINE, f"ckpt_path={run_a / 'checkpoints' / 'last.ckpt'}"])) == run_a


# ----------------------------------------------------------------- 4. a resume that fails keeps config.yaml
def test_a_diverging_resume_keeps_the_runs_config_and_checkpoints(tmp_path, snapshot, capsys):
    run = tmp_path / "run"
    assert main([*SINE, f"output_dir={run}"]) == 0
    kept = {k: v for k, v in snapshot(run).items() if k == "config.yaml" or k.startswith(("checkpoints", ".hydra"))}
    last = run / "checkpoints" / "last.ckpt"
    assert main([*SINE, "trainer.max_steps=6", "algorithm.inner.lr=1e30", f"ckpt_path={last}"]) == 2
    assert "not finite" in _error_line(capsys)
    now = snapshot(run)
    assert {k: now.get(k) for k in kept} == kept  # config.yaml, .hydra/ and both checkpoints as they were

    assert main([*SINE, "trainer.max_steps=6", f"ckpt_path={last}"]) == 0  # a resume that runs writes its config
    assert OmegaConf.load(run / "config.yaml").trainer.max_steps == 6


# ----------------------------------------------------------------- 5. eval.py's json_path
def test_eval_checks_json_path_by_creating_a_file_first(tmp_path):
    with pytest.raises(ConfigError, match=r"json_path=/proc/x.json cannot be written"):
        evaluate.writable(Path("/proc/x.json"))
    target = tmp_path / "deep" / "eval.json"
    assert evaluate.writable(target) == target and list(tmp_path.iterdir()) == []  # the probe left nothing


def test_eval_with_an_unwritable_json_path_exits_2_before_evaluating(tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config([*SINE, f"output_dir={run}"]))
    capsys.readouterr()
    status = evaluate.main([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "json_path=/proc/x.json"])
    assert status == 2 and "json_path=/proc/x.json cannot be written" in _error_line(capsys)


def test_a_failed_write_after_evaluation_still_prints_the_figures(tmp_path, capsys):
    report = {"summary": "test/mse = 1.234 ± 0.1 (4 episodes, 5-shot, 2 inner steps, transductive)",
              "metrics": {"test/mse": 1.234, "test/mse_ci95": 0.1}}  # fmt: skip
    path = tmp_path / "gone" / "eval.json"
    (tmp_path / "gone").write_text("a file where the folder should be")
    with pytest.raises(ConfigError, match=r"could not write json_path=.*eval.json \(.*\); the figures are printed"):
        evaluate.write_report(report, path, "regression")
    assert report["summary"] in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone"]
