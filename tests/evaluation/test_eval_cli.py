"""eval.py: a checkpoint re-evaluated with its saved config reproduces the training run's test figures
exactly; overrides follow the training CLI's grammar and validation; the sine curve matches per-step
evaluations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_meta.config import load_config, override_config
from lightning_meta.evaluate import main

REPO = Path(__file__).resolve().parents[2]


def evaluate(argv: list[str], capsys) -> tuple[int, list[str], str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_eval_reproduces_the_test_metrics_the_training_run_logged(omniglot_run, tmp_path, capsys):
    code, lines, _ = evaluate([f"ckpt_path={omniglot_run.best}", f"json_path={tmp_path / 'e.json'}"], capsys)
    assert code == 0
    report = json.loads((tmp_path / "e.json").read_text())
    tested = {k: v for k, v in omniglot_run.metrics.items() if k.startswith("test/")}  # train() adds val/best
    assert report["metrics"] == tested  # same episodes, same weights: identical figures
    acc, ci = omniglot_run.metrics["test/acc"], omniglot_run.metrics["test/acc_ci95"]
    setting = "(4 episodes, 5-way 1-shot, 2 inner steps, transductive)"
    expected = f"test/acc = {100 * acc:.2f} ± {100 * ci:.2f} % {setting}"
    assert lines[0] == report["summary"] == expected
    step1 = omniglot_run.metrics["test/acc_step1"], omniglot_run.metrics["test/acc_step1_ci95"]
    assert lines[2] == f"test/acc_step1 = {100 * step1[0]:.2f} ± {100 * step1[1]:.2f} %"
    assert report["protocol"] == {
        "split": "test",
        "episodes": 4,
        "ways": 5,
        "shots": 1,
        "queries": 15,
        "seed": 0,
        "eval_inner": {"steps": 2, "lr": 0.001, "batch_size": None, "optimizer": "adam"},
        "transductive": True,
        "eval_curve_steps": [0, 1],
    }
    assert report["checkpoint"] == str(omniglot_run.best.resolve())


def test_eval_script_applies_overrides_and_writes_the_default_json(omniglot_run):
    argv = [f"ckpt_path={omniglot_run.best}", "algorithm.transductive=false", "data.test_episodes=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "eval.py", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("test/acc = ")
    assert lines[0].endswith(" % (3 episodes, 5-way 1-shot, 2 inner steps, non-transductive)")
    stem = f"eval_{omniglot_run.best.stem}_5way-1shot_2steps_3ep_nontransductive_28px_seed"
    path = Path(lines[-1].removeprefix("wrote "))
    assert path.parent == omniglot_run.out and path.name.startswith(stem), lines[-1]  # then the seed, a config hash
    report = json.loads(path.read_text())
    assert report["summary"] == lines[0]
    assert report["metrics"]["test/episodes"] == 3
    assert report["protocol"]["transductive"] is False
    assert report["config"]["algorithm"]["transductive"] is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["data.wayz=5"],
            "unknown key data.wayz for lightning_meta.data.OmniglotDataModule; did you mean ways?",
        ),
        (
            ["trainer.devicez=2"],
            "unknown key trainer.devicez for pytorch_lightning.Trainer; did you mean devices?",
        ),
        (["seedd=1"], "unknown key seedd; did you mean seed or data.seed?"),
        (
            ["data.ways=five"],
            "data.ways='five' has the wrong type; lightning_meta.data.OmniglotDataModule expects int",
        ),
        (
            ["algorithm.chunk_sise=2"],
            "unknown key algorithm.chunk_sise for lightning_meta.algorithms.Reptile; did you mean chunk_size?",
        ),
        (
            ["algorithm=maml"],
            "algorithm=maml selects a config group, which a saved run cannot change; override its "
            "keys instead (e.g. algorithm.eval_inner.steps=10 or data.shots=5)",
        ),
        (
            ["data.ways=20"],
            "data.ways=20 but the checkpoint's network has 5 outputs; evaluate with data.ways<=5 or "
            "meta-train a 20-way model",
        ),
        (["oops"], "cannot read argument 'oops'; write key=value (e.g. data.ways=20 or algorithm=imaml)"),
    ],
)
def test_eval_override_errors_name_the_fix(omniglot_run, argv, message, capsys):
    code, lines, err = evaluate([f"ckpt_path={omniglot_run.best}", *argv], capsys)
    assert (code, lines, err) == (2, [], f"error: {message}\n")


def test_eval_refuses_a_model_override_that_the_weights_do_not_fit(omniglot_run, capsys):
    code, _, err = evaluate([f"ckpt_path={omniglot_run.best}", "model.hidden=16"], capsys)
    assert code == 2
    assert err.startswith("error: the weights in ") and "do not fit the model this config builds" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give the checkpoint to evaluate: eval.py ckpt_path=<run>/checkpoints/<name>.ckpt"),
        (
            ["ckpt_path=nowhere.ckpt"],
            "ckpt_path=nowhere.ckpt does not exist or is not a file; give e.g. <run>/checkpoints/last.ckpt",
        ),
    ],
)
def test_eval_without_a_checkpoint_says_what_to_give(argv, message, capsys):
    assert evaluate([*argv, "data.shots=5"], capsys) == (2, [], f"error: {message}\n")


def test_override_config_changes_only_the_overridden_keys_and_validates():
    saved = OmegaConf.to_container(load_config(["data=sinusoid"]), resolve=True)
    snapshot = json.dumps(saved, sort_keys=True)
    cfg = override_config(saved, ["data.test_episodes=10000", "data.queries=1", "algorithm.eval_curve_steps=[1,5]"])
    assert json.dumps(saved, sort_keys=True) == snapshot  # the saved dict is not modified
    changed = OmegaConf.to_container(cfg)
    assert changed["data"].pop("test_episodes") == 10000 and saved["data"].pop("test_episodes") == 600
    assert changed["data"].pop("queries") == 1 and saved["data"].pop("queries") == 10
    assert changed["algorithm"].pop("eval_curve_steps") == [1, 5] and saved["algorithm"].pop("eval_curve_steps") is None
    assert changed == saved
    assert OmegaConf.is_struct(cfg)


def test_sine_curve_points_equal_evaluations_with_that_many_steps(sine_run, tmp_path, capsys):
    metrics = sine_run.metrics
    assert {"test/mse_step1", "test/mse_step5", "test/mse_step10"} <= set(metrics)
    assert metrics["test/mse_step10"] == metrics["test/mse"]  # eval_inner.steps=10 is the last point
    assert metrics["test/mse_step1"] != metrics["test/mse_step10"]
    for k in (1, 5):
        json_path = tmp_path / f"k{k}.json"
        argv = [
            f"ckpt_path={sine_run.best}",
            f"algorithm.eval_inner.steps={k}",
            "algorithm.eval_curve_steps=null",
        ]
        code, lines, _ = evaluate([*argv, f"json_path={json_path}"], capsys)
        assert code == 0
        report = json.loads(json_path.read_text())
        assert report["metrics"]["test/mse"] == metrics[f"test/mse_step{k}"]
        assert report["metrics"]["test/mse_ci95"] == metrics[f"test/mse_step{k}_ci95"]
        mse, ci = metrics[f"test/mse_step{k}"], metrics[f"test/mse_step{k}_ci95"]
        assert lines[0] == f"test/mse = {mse:.4g} ± {ci:.2g} (6 episodes, 5-shot, {k} inner steps, transductive)"


def test_eval_help_lists_its_own_keys(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python eval.py ckpt_path=")
    assert all(key in out for key in ("json_path", "allow_nonfinite", "dotted.key=value"))
