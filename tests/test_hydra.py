"""Hydra runs the command line: its grammar, its flags, reruns from a saved config, sweeps with any launcher, and
the project's own checks on top (every key bound to its constructor, one-line errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_meta import cli
from lightning_meta.config import load_config
from lightning_meta.run import train

REPO = Path(__file__).resolve().parent.parent
SINE = [
    "data=sinusoid", "model.hidden=[8]", "trainer.max_steps=2", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.val_episodes=2",
    "data.test_episodes=2", "data.eval_batch_size=2", "data.meta_batch_size=2", "algorithm.eval_inner.steps=1",
    "logger=csv",
]  # fmt: skip


class Recorder:
    """A task function that keeps the checked config of every job instead of training."""

    def __init__(self) -> None:
        self.configs = []

    def __call__(self, cfg):
        self.configs.append(cfg)
        return {"test/mse": float(cfg.seed)}


def run_cli(argv: list[str]) -> tuple[int, Recorder]:
    recorder = Recorder()
    return cli.main(argv, recorder), recorder


def test_plus_tilde_and_null_follow_hydras_grammar(tmp_path):
    status, seen = run_cli(["+trainer.gradient_clip_val=0.5", "~logger", "algorithm.outer.lr_final=null",
                            "tags=[maml,omniglot]", f"output_dir={tmp_path}"])  # fmt: skip
    assert status == 0
    cfg = seen.configs[0]
    assert cfg.trainer.gradient_clip_val == 0.5 and "logger" not in cfg
    assert cfg.algorithm.outer.lr_final is None and list(cfg.tags) == ["maml", "omniglot"]


def test_any_argument_of_a_target_is_a_key_without_plus(tmp_path):
    status, seen = run_cli(["trainer.gradient_clip_val=0.25", "algorithm.eval_inner.steps=7", f"output_dir={tmp_path}"])
    assert status == 0
    assert seen.configs[0].trainer.gradient_clip_val == 0.25 and seen.configs[0].algorithm.eval_inner.steps == 7
    assert seen.configs[0].algorithm.eval_inner.lr == load_config().algorithm.eval_inner.lr  # filled in around it


@pytest.mark.parametrize(
    "sweep, expected",
    [
        (["seed=range(0,3)"], [0, 1, 2]),
        (["seed=choice(4,7)"], [4, 7]),
        (["seed=1,2", "data.ways=5,20"], [1, 1, 2, 2]),
    ],
)
def test_sweep_grammar(sweep, expected, tmp_path):
    status, seen = run_cli(["-m", *sweep, f"output_dir={tmp_path}"])
    assert status == 0
    assert sorted(cfg.seed for cfg in seen.configs) == expected
    assert len({cfg.output_dir for cfg in seen.configs}) == len(expected)  # one directory per job
    assert (tmp_path / "sweep.md").is_file()


def test_glob_sweeps_the_matching_presets(tmp_path):
    status, seen = run_cli(["-m", "experiment=glob(maml_omniglot_5w*)", f"output_dir={tmp_path}"])
    assert status == 0
    assert sorted(cfg.selection.experiment for cfg in seen.configs) == ["maml_omniglot_5w1s", "maml_omniglot_5w5s"]
    assert {cfg.data.shots for cfg in seen.configs} == {1, 5}


def test_a_mistake_in_any_sweep_job_stops_the_sweep_before_it_starts(tmp_path, capsys):
    status, seen = run_cli(["-m", "data.ways=5,0", f"output_dir={tmp_path / 'sweep'}"])
    assert status == 2 and not seen.configs and not (tmp_path / "sweep").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: data.ways=0; it must be at least 1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["algorithm=mamll"], "error: no algorithm named 'mamll'; did you mean maml or imaml or fomaml?"),
        (["data.wayz=5"], "error: unknown key data.wayz for lightning_meta.data.OmniglotDataModule; did you mean ways"),
        (["sed=1"], "error: unknown key sed; did you mean seed or data.seed?"),
        (["data.ways"], "error: cannot read argument 'data.ways'; write key=value (e.g. data.ways=20"),
        (["--cfg", "jobs"], "error: argument --cfg/-c: invalid choice: 'jobs'"),
        (["--no-such-flag"], "error: unknown option --no-such-flag; see --help"),
        (["logger=null"], "error: Config group override must be a string or a list. Got NoneType"),
        (["--config-path", "/no/such/folder"], "error: no config /no/such/folder/train.yaml"),
    ],
)
def test_hydras_own_errors_are_one_line_and_exit_2(argv, message, capsys):
    status, seen = run_cli(argv)
    err = capsys.readouterr().err
    assert status == 2 and not seen.configs
    assert err.startswith(message) and err.count("\n") == 1, err


def test_cfg_job_hydra_and_all(capsys):
    assert cli.main(["--cfg", "job", "data=sinusoid"], None) == 0
    job = OmegaConf.create(capsys.readouterr().out)
    assert "hydra" not in job and job.model._target_ == "lightning_meta.models.MLP"
    assert job == load_config(["data=sinusoid"])  # every default filled in and shown, as a run gets it
    assert cli.main(["--cfg", "hydra", "data=sinusoid"], None) == 0
    hydra = OmegaConf.create(capsys.readouterr().out)
    assert set(hydra) == {"hydra"} and hydra.hydra.job.chdir is False
    assert cli.main(["--cfg", "all", "data=sinusoid"], None) == 0
    both = OmegaConf.create(capsys.readouterr().out)
    assert {"hydra", "data", "selection"} <= set(both)
    assert cli.main(["--cfg", "job", "--package", "data.ways", "data=sinusoid"], None) == 0
    assert capsys.readouterr().out.strip() == "1"


def test_info_and_shell_completion(capsys):
    assert cli.main(["--info", "searchpath"], None) == 0
    assert "lightning_meta" in capsys.readouterr().out
    env = {**os.environ, "COMP_LINE": "python train.py algorithm=ma"}
    done = subprocess.run([sys.executable, "train.py", "-sc", "query=bash"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == ["algorithm=maml"]


def test_a_users_config_folder_joins_the_search_path(tmp_path, capsys):
    (tmp_path / "algorithm").mkdir()
    (tmp_path / "algorithm" / "mine.yaml").write_text("_target_: lightning_meta.algorithms.MAML\ninner: {steps: 2}\n")
    assert cli.main(["--cfg", "job", "algorithm=mine", f"hydra.searchpath=[file://{tmp_path}]"], None) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.algorithm._target_ == "lightning_meta.algorithms.MAML" and cfg.algorithm.inner.steps == 2
    assert cli.main(["--cfg", "job", "algorithm=mine", "--config-dir", str(tmp_path)], None) == 0
    assert OmegaConf.create(capsys.readouterr().out).selection.algorithm == "mine"


def test_a_run_reruns_from_its_saved_config(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main([*SINE, "seed=3", f"output_dir={first}"], train) == 0
    saved = first / ".hydra"
    assert OmegaConf.load(saved / "overrides.yaml")[-1] == f"output_dir={first}"
    argv = ["--config-path", str(saved), "--config-name", "config", f"output_dir={second}"]
    assert cli.main(argv, train) == 0
    one, two = (OmegaConf.load(run / "config.yaml") for run in (first, second))
    one.output_dir = two.output_dir = None
    assert one == two and one.seed == 3 and one.selection.data == "sinusoid"
    metrics = [json.loads((run / "test_metrics.json").read_text()) for run in (first, second)]
    assert metrics[0]["test/mse"] == metrics[1]["test/mse"]


def test_debug_fdr_is_a_seconds_long_smoke_test(tmp_path):
    done = subprocess.run(
        [sys.executable, "train.py", "debug=fdr", "data=sinusoid", f"output_dir={tmp_path / 'run'}"], cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in done.stderr + done.stdout
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["test/episodes"] == 10.0


@pytest.mark.parametrize("name", ["default", "overfit", "profiler", "limit", "fdr"])
def test_debug_configs_compose(name):
    cfg = load_config([f"debug={name}", "data=sinusoid"])
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.detect_anomaly is True
    if name == "overfit":
        assert cfg.data.train_tasks == 4


def _sweep(launcher: list[str], out: Path) -> list[dict]:
    # 60 steps: each job lasts seconds, longer than the skew between two workers' starts on a loaded machine
    argv = [sys.executable, "train.py", "-m", *SINE, "trainer.max_steps=60", "seed=0,1", *launcher, f"output_dir={out}"]
    done = subprocess.run(argv, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("sweep*.md")) == ["sweep.md"]
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/job.json"))]


@pytest.mark.slow
def test_joblib_runs_jobs_concurrently_and_submitit_local_gives_the_same_metrics(tmp_path):
    jobs = _sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path / "joblib")
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    (a, b) = jobs
    assert a["started"] < b["ended"] and b["started"] < a["ended"], "the two jobs' wall-clock intervals overlap"
    local = _sweep(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], tmp_path / "submitit")
    assert [j["status"] for j in local] == ["ok", "ok"]
    assert [j["metrics"] for j in local] == [j["metrics"] for j in jobs]
    assert [Path(j["output_dir"]).name for j in local] == ["0_seed=0", "1_seed=1"]


def test_callbacks_come_from_the_config(tmp_path):
    from pytorch_lightning.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichModelSummary,
        RichProgressBar,
        Timer,
    )

    from lightning_meta.callbacks import LastCheckpoint, NonFiniteGuard
    from lightning_meta.review import EvaluationReview
    from lightning_meta.run import prepare

    sine = [a for a in SINE if a != "trainer.enable_progress_bar=false"]  # a progress bar callback needs it on
    cfg = load_config([
        *sine, "callbacks=[default,early_stopping,lr_monitor,rich_progress_bar,model_summary]",
        "+callbacks.mine._target_=pytorch_lightning.callbacks.Timer", f"output_dir={tmp_path}",
    ])  # fmt: skip
    kinds = [type(c) for c in prepare(cfg).trainer.callbacks]
    ours = [NonFiniteGuard, LastCheckpoint, EvaluationReview, EarlyStopping, LearningRateMonitor, RichProgressBar,
            RichModelSummary, Timer, ModelCheckpoint]  # fmt: skip
    assert [k for k in kinds if k in ours] == ours  # the config's order (the guard before last.ckpt); Lightning
    # moves ModelCheckpoint to the end itself
    stopping = next(c for c in prepare(cfg).trainer.callbacks if isinstance(c, EarlyStopping))
    assert (stopping.monitor, stopping.mode) == ("val/mse", "min")  # filled from the task (regression)
    assert not any(tmp_path.iterdir())  # prepare writes nothing


def test_a_key_given_twice_says_which_value_wins(tmp_path, capsys):
    status, seen = run_cli(["data.shots=5", "data.ways=20", "data.shots=10", f"output_dir={tmp_path}"])
    assert status == 0 and seen.configs[0].data.shots == 10
    assert capsys.readouterr().err == "note: data.shots is given more than once; the last, data.shots=10, wins\n"


def test_a_sweep_rerun_into_its_directory_skips_finished_jobs_and_keeps_the_first_summary(tmp_path):
    ran = []

    def task(cfg):  # finishes job seed=0 only, as a run that wrote its test_metrics.json
        ran.append(cfg.seed)
        if cfg.seed == 0:
            Path(cfg.output_dir, "test_metrics.json").write_text('{"test/mse": 1.5}')
        return {"test/mse": 1.5}

    argv = ["-m", "seed=0,1", f"output_dir={tmp_path}"]
    assert cli.main(argv, task) == 0 and ran == [0, 1]
    first = (tmp_path / "sweep.md").read_text()
    assert cli.main(argv, task) == 0 and ran == [0, 1, 1]  # seed=0 finished: skipped
    assert (tmp_path / "sweep.md").read_text() == first  # never overwritten
    second = (tmp_path / "sweep-2.md").read_text()
    assert "| 0 | seed=0 | skipped: finished earlier | 1.5 |" in second and "| 1 | seed=1 | ok | 1.5 |" in second


def test_a_swept_argument_the_yaml_does_not_list_is_a_key_too(tmp_path):
    status, seen = run_cli(["-m", "algorithm.eval_inner.steps=1,2", f"output_dir={tmp_path}"])
    assert status == 0 and [cfg.algorithm.eval_inner.steps for cfg in seen.configs] == [1, 2]
    assert [Path(cfg.output_dir).name for cfg in seen.configs] == ["0_algorithm.eval_inner.steps=1",
                                                                    "1_algorithm.eval_inner.steps=2"]  # fmt: skip
