"""Optuna searches (`python train.py -m hparams_search=NAME`, hydra_plugins/lightning_meta/optuna_sweeper.py and
lightning_meta/search.py): the search-space grammar, the trial budget shared by workers, pruning through the real
callback, the report's command, and the search spaces in configs/hparams_search. The end-to-end tests run shrunk
sine searches in subprocesses, as a user (or a second machine) would."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lightning_meta.optuna_sweeper import (
    OptunaSweeper,
    contiguous,
    flat_params,
    grammar_text,
    probes,
    search_space,
    to_distribution,
)
from lightning_meta import search
from lightning_meta.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# A seconds-long sine search: 8 meta-iterations, validation (the pruner's intermediate values) every 2.
TINY = [
    "hydra/sweeper=optuna",
    "data=sinusoid",
    "algorithm=maml",
    "trainer.max_steps=8",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.val_episodes=4",
    "data.test_episodes=4",
    "data.meta_batch_size=2",
    "hydra.sweeper.direction=minimize",  # val/best is the best val/mse
]


def search_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", "-m", *TINY, f"output_dir={out}", *extra]


def run_search(out: Path, *extra: str) -> str:
    done = subprocess.run(search_command(out, *extra), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def trial_dirs(out: Path) -> dict[int, Path]:
    """{trial number: job directory} of the jobs a worker ran in `out`."""
    return {int(p.name.split("_")[0]): p for p in out.iterdir() if p.name[0].isdigit() and (p / "job.json").is_file()}


# ----------------------------------------------------------------- (d) the grammar
def _dist(text: str):
    return to_distribution(OverridesParser.create().parse_override(f"k={text}"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("choice(8,16,32)", CategoricalDistribution([8, 16, 32])),
        ("maml,fomaml", CategoricalDistribution(["maml", "fomaml"])),
        ("choice([4],[8,8])", CategoricalDistribution(["[4]", "[8,8]"])),  # lists: their override text
        ("range(1,4)", IntDistribution(1, 3)),  # stop excluded, as Hydra's range
        ("range(2,11,3)", IntDistribution(2, 8, step=3)),
        ("range(10,0,-3)", IntDistribution(1, 10, step=3)),
        ("range(0.1,0.5,0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("tag(log,range(1,9))", IntDistribution(1, 8, log=True)),
        ("shuffle(range(1,4))", CategoricalDistribution([1, 2, 3])),
        ("interval(0.1,1.0)", FloatDistribution(0.1, 1.0)),
        ("interval(0,1)", FloatDistribution(0.0, 1.0)),  # Hydra's interval is float ...
        ("int(interval(1,64))", IntDistribution(1, 64)),  # ... unless cast
        ("tag(log,interval(0.001,0.1))", FloatDistribution(0.001, 0.1, log=True)),
        ("tag(log,int(interval(1,64)))", IntDistribution(1, 64, log=True)),
    ],
)
def test_sweep_grammar_maps_to_optuna_distributions(text, expected):
    dist = _dist(text)
    if isinstance(expected, CategoricalDistribution) and "shuffle" in text:
        assert sorted(dist.choices) == sorted(expected.choices)
    else:
        assert dist == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("glob(*)", "choice(), range() and interval()"),
        ("tag(log,choice(1,2))", "a choice has no log scale"),
        ("tag(log,interval(0,1))", "positive low end"),
        ("interval(1,1)", "the interval is empty"),
        ("range(3,3)", "holds no value"),
        ("tag(log,range(1,9,2))", "needs step 1"),
        ("tag(best,interval(0.1,1))", "the tag log only"),
    ],
)
def test_sweep_grammar_mistakes_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _dist(text)


def test_params_nested_or_dotted_fixed_or_searched_and_the_command_line_last():
    dotted = flat_params({"algorithm.inner.lr": "interval(0.01,1)", "data.ways": 5, "tags": ["a", "b"]})
    nested = flat_params({"algorithm": {"inner": {"lr": "interval(0.01,1)"}}, "data": {"ways": 5}, "tags": ["a", "b"]})
    assert dotted == nested == ["algorithm.inner.lr=interval(0.01,1)", "data.ways=5", "tags=[a,b]"]
    parsed = OverridesParser.create().parse_overrides([*dotted, "data.ways=choice(5,20)", "algorithm.inner.lr=0.4"])
    space, fixed = search_space(parsed)
    assert space == {"data.ways": CategoricalDistribution([5, 20])}
    assert fixed == {"tags": "tags=[a,b]", "algorithm.inner.lr": "algorithm.inner.lr=0.4"}
    space, fixed = search_space(OverridesParser.create().parse_overrides(["++a.b=range(1,3)", "a.b=2", "+c=1"]))
    assert space == {} and fixed == {"a.b": "a.b=2", "c": "+c=1"}  # the same key whatever its prefix
    # every choice and both ends of every range once, the others at their first value
    assert probes({"a": IntDistribution(1, 3), "b": CategoricalDistribution(["x", "y", "z"])}) == [
        {"a": 1, "b": "x"}, {"a": 3, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]  # fmt: skip


@pytest.mark.parametrize("value", ["maml", "x y", "a,b", "it's", "1.0", "null", 0.012345678901234567, 1e-7, True, 3])
def test_a_sampled_value_is_written_so_that_hydra_reads_it_back(value):
    assert OverridesParser.create().parse_override(f"k={grammar_text(value)}").value() == value


def test_storage_urls_every_worker_and_job_opens_alike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert search.storage_url(None, "sweep") == f"sqlite:///{tmp_path}/sweep/optuna.db"
    assert search.storage_url("sqlite:///s.db", "x") == f"sqlite:///{tmp_path}/s.db"
    assert search.storage_url("journal://j/s.log", "x") == f"journal://{tmp_path}/j/s.log"
    assert search.storage_url("journal:///abs/s.log", "x") == "journal:///abs/s.log"
    assert search.storage_url("postgresql://u:pw@h/db", "x") == "postgresql://u:pw@h/db"
    assert search.shown_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(ConfigError, match="not a URL"):
        search.storage_url("optuna.db", "x")


def test_each_trial_is_sampled_by_its_own_seed():
    """Workers sharing a seed draw different parameters (seed + trial number), each reproducibly."""
    study = optuna.create_study()
    draws = []
    for number in (0, 1, 0):
        trial = study.ask()
        study.sampler = search.make_sampler({"type": "random", "seed": 7}, number)
        draws.append(trial.suggest_float("x", 0.0, 1.0))
    assert draws[0] == draws[2] != draws[1]
    with pytest.raises(ConfigError, match="tpe or random"):
        search.make_sampler({"type": "grid"})
    with pytest.raises(ConfigError, match="median or none"):
        search.make_pruner({"type": "hyperband"})


def _study_with_complete_trials(reports: list[dict[int, float]], pruner) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for values in reports:
        trial = study.ask()
        for step, value in values.items():
            trial.report(value, step)
        study.tell(trial, max(values.values()))
    return study


def test_the_seconds_pruner_compares_the_best_value_reached_within_the_same_time():
    """Time-budgeted trials report at seconds that no two share: a trial is pruned when the best value it reached
    by its last report is below the median of what the complete trials had reached by then."""
    pruner = search.make_pruner({"type": "median", "unit": "seconds", "n_startup_trials": 3, "n_warmup_steps": 30})
    study = _study_with_complete_trials(
        [{20: 0.5, 61: 0.7, 118: 0.9}, {33: 0.6, 70: 0.65, 140: 0.95}, {25: 0.4, 90: 0.8}], pruner
    )  # by 80 s they had reached 0.7, 0.65 and 0.4: median 0.65; by 100 s 0.7, 0.65, 0.8: median 0.7

    def pruned(reports: dict[int, float]) -> bool:
        trial = study.ask()
        for step, value in reports.items():
            trial.report(value, step)
        return trial.should_prune()

    assert pruned({80: 0.6}) and not pruned({80: 0.66})
    assert pruned({100: 0.69}) and not pruned({100: 0.7})
    assert not pruned({25: 0.1}), "within the warm-up (30 s) no trial is pruned"
    assert type(pruner).__name__ == "BudgetMedianPruner"
    assert type(search.make_pruner({"type": "median"})) is optuna.pruners.MedianPruner
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner.unit=hours; give steps"):
        search.make_pruner({"type": "median", "unit": "hours"})


def test_a_trial_reports_at_seconds_of_training_when_the_pruner_counts_seconds():
    trainer = SimpleNamespace(global_step=340)
    ref = search.TrialRef("sqlite:///x.db", "s", 0, {"type": "median", "unit": "seconds"})
    pruning = search.TrialPruning(ref, "val/acc")
    pruning.started = time.monotonic() - 12.5
    assert pruning.step(trainer) == 12
    steps = search.TrialPruning(ref._replace(pruner={"type": "median"}), "val/acc")
    assert steps.step(trainer) == 340


def test_the_seconds_pruner_waits_for_its_startup_trials():
    pruner = search.make_pruner({"type": "median", "unit": "seconds", "n_startup_trials": 3})
    study = _study_with_complete_trials([{10: 0.9}, {12: 0.8}], pruner)
    trial = study.ask()
    trial.report(0.0, 50)
    assert not trial.should_prune()


# ----------------------------------------------------------------- the budget race, unit level
def test_a_trial_asked_over_budget_is_told_failed_and_not_counted():
    """Two workers asking for the last places at once: the storage numbers the trials; the one numbered past
    n_trials is told FAIL (not_run) and never launched; it does not count against the budget."""
    study = optuna.create_study()
    other = [study.ask() for _ in range(2)]  # another worker's trials 0 and 1, running
    sweeper = OptunaSweeper(n_trials=2)
    pending: dict = {}
    batch = sweeper._ask(study, 1, {"x": FloatDistribution(0.0, 1.0)}, {}, pending)
    assert batch == [] and pending == {}
    late = study.get_trials()[2]
    assert late.number == 2 and late.state == TrialState.FAIL and late.user_attrs == {search.NOT_RUN: "over budget"}
    trials = study.get_trials()
    assert [search.in_budget(trials, n, 2) for n in range(4)] == [True, True, False, False]
    # extended later to n_trials=3, the study runs trial 3 as its third: the over-budget trial 2 does not count
    assert search.in_budget(trials, 3, 3) and not search.in_budget(trials, 3, 2)
    assert [t.state for t in trials[:2]] == [TrialState.RUNNING] * 2 and [t.number for t in other] == [0, 1]


def test_a_batch_launches_as_runs_of_consecutive_trial_numbers():
    """Job k of a launch is numbered initial_job_idx + k: a batch with a gap (another worker asked the number in
    between) launches as two runs, so that each job's number, and directory, is its trial's."""
    trials = [optuna.trial.FixedTrial({}, number=n) for n in (5, 3, 4, 7)]
    runs = contiguous([(t, [f"x={t.number}"]) for t in trials])
    assert [[t.number for t, _ in run] for run in runs] == [[3, 4, 5], [7]]


def test_no_trial_callback_outside_a_search():
    assert search.trial_callbacks("regression", validate=True) == []


# ----------------------------------------------------------------- (a) two workers, one study
def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path):
    journal = tmp_path / "study.log"
    args = ["algorithm.inner.lr=tag(log,interval(0.001,0.1))", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner.type=none", f"hydra.sweeper.storage=journal://{journal}",
            "hydra.sweeper.study_name=shared"]  # fmt: skip
    workers = {w: subprocess.Popen(search_command(tmp_path / w, *args), cwd=REPO, env=ENV, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for w in "ab"}  # fmt: skip
    logs = {w: p.communicate(timeout=300)[0] for w, p in workers.items()}
    assert all(p.returncode == 0 for p in workers.values()), logs
    ran = {w: trial_dirs(tmp_path / w) for w in "ab"}
    assert not set(ran["a"]) & set(ran["b"]), "a trial ran in both workers"
    assert set(ran["a"]) | set(ran["b"]) == {0, 1, 2, 3}, "a trial was lost"
    study = optuna.load_study(study_name="shared", storage=search.open_storage(f"journal://{journal}"))
    trials = study.get_trials()
    budget = [t for t in trials if search.counted(t)]
    assert sorted(t.number for t in budget) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in budget)
    assert all(t.state == TrialState.FAIL for t in trials if t not in budget)  # asked in the race, never run
    for t in budget:  # the study's record of each trial is the job that ran it, in the worker that asked it
        worker = "a" if t.number in ran["a"] else "b"
        assert t.user_attrs["output_dir"] == str(ran[worker][t.number])
        record = json.loads((ran[worker][t.number] / "job.json").read_text())
        assert record["metrics"]["val/best"] == t.value
    reports = [(tmp_path / w / "search.md").read_text() for w in "ab"]
    assert any("trials: 4 complete, 0 pruned, 0 failed, 0 running" in r for r in reports)  # the last to finish
    last = tmp_path / ("a" if "4 complete" in reports[0] else "b")
    assert (last / "optimization_history.png").is_file() and (last / "param_importances.png").is_file()
    assert list((last / "tensorboard").glob("events.out.tfevents.*"))


# ----------------------------------------------------------------- (b) pruning, (c) the report's command
@pytest.fixture(scope="module")
def pruned_search(tmp_path_factory):
    """Two enqueued trials of one search: trial 0 adapts at evaluation with the sine step size 0.01, trial 1 with
    0.1, which overshoots on these barely trained weights (val/mse ~12 against ~6.4 at step 2, measured); with the
    median pruner after one complete trial the real callback prunes trial 1 at its first validation."""
    out = tmp_path_factory.mktemp("search") / "sweep"
    out.mkdir()
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{out}/optuna.db", direction="minimize")
    study.enqueue_trial({"algorithm.eval_inner.lr": 0.01})
    study.enqueue_trial({"algorithm.eval_inner.lr": 0.1})
    log = run_search(out, "algorithm.eval_inner.lr=tag(log,interval(0.001,1))", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0")  # fmt: skip
    return out, log


def test_a_lagging_trial_is_pruned_before_its_last_step(pruned_search):
    out, log = pruned_search
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out}/optuna.db")
    good, bad = study.get_trials()
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [2, 4, 6, 8]
    assert bad.state == TrialState.PRUNED and bad.last_step == 2  # its first validation of four
    step = bad.last_step
    assert bad.intermediate_values[step] > good.intermediate_values[step]
    dirs = trial_dirs(out)
    record = json.loads((dirs[1] / "job.json").read_text())
    assert record["status"] == "pruned" and f"pruned at step {step}" in record["error"]
    assert not (dirs[1] / "test_metrics.json").exists()  # stopped at once: no meta-test
    assert f"pruned: trial 1 pruned at step {step}" in log
    report = (out / "search.md").read_text()
    assert "trials: 1 complete, 1 pruned, 0 failed, 0 running" in report
    assert f"| 1 | pruned | pruned at step {step} (" in report
    assert "param_importances: need 2 or more complete trials (have 1)" in report
    assert (out / "optimization_history.png").is_file() and not (out / "param_importances.png").exists()


def test_the_reports_best_command_reproduces_the_best_trial(pruned_search, tmp_path):
    out, _ = pruned_search
    report = (out / "search.md").read_text().splitlines()
    command = shlex.split(report[report.index("```") + 1])
    assert command[:2] == ["python", "train.py"] and "algorithm.eval_inner.lr=0.01" in command
    rerun = tmp_path / "rerun"
    done = subprocess.run([sys.executable, *command[1:], f"output_dir={rerun}"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out}/optuna.db")
    best = study.best_trial
    assert best.number == 0
    ckpt = torch.load(rerun / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert float(state["best_model_score"]) == best.value  # val/best, the objective: the same value
    trial_dir = Path(best.user_attrs["output_dir"])
    assert json.loads((rerun / "test_metrics.json").read_text()) == json.loads(
        (trial_dir / "test_metrics.json").read_text())  # fmt: skip


# ----------------------------------------------------------------- configs/hparams_search
@pytest.mark.parametrize("name", ["maml_omniglot_5w1s", "fomaml_omniglot_5w1s", "imaml_omniglot_5w1s",
                                  "reptile_omniglot_5w1s"])  # fmt: skip
def test_every_search_space_composes_and_checks(name):
    """hparams_search=NAME selects the Optuna sweeper and its algorithm; every choice and both ends of every range
    compose and pass the job checks (what the sweeper does before its study is touched)."""
    from hydra.types import HydraContext, RunMode

    from lightning_meta.config import hydra_app

    app = hydra_app("train")
    cfg = app.compose_config("train", [f"hparams_search={name}"], run_mode=RunMode.MULTIRUN,
                             with_log_configuration=False)  # fmt: skip
    node = cfg.hydra.sweeper
    assert node._target_ == search.SWEEPER_TARGET and node.objective == "val/best" and node.direction == "maximize"
    assert cfg.algorithm._target_.lower().endswith("." + name.split("_")[0])
    sweeper = OptunaSweeper(**{k: v for k, v in node.items() if k != "_target_"})
    sweeper.hydra_context, sweeper.config = HydraContext(config_loader=app.config_loader, callbacks=None), cfg
    _, space, _ = sweeper.check_space(list(cfg.hydra.overrides.task))
    assert {"algorithm.inner.lr", "algorithm.outer.lr"} <= set(space)
    comments = (REPO / "configs" / "hparams_search" / f"{name}.yaml").read_text()
    assert all(comments.count(f"      {key}:") == 1 for key in space)
    sweeper.direction = "minimize"  # val/best is val/acc here: a study minimizing it is refused before it starts
    with pytest.raises(ConfigError, match="higher-is-better here; give hydra.sweeper.direction=maximize"):
        sweeper.check_space(list(cfg.hydra.overrides.task))


def test_the_direction_must_agree_with_the_objective_and_the_pruned_metric():
    search.check_direction("minimize", "val/best", "regression", pruning=True)
    search.check_direction("maximize", "test/acc", "classification", pruning=True)
    search.check_direction("minimize", "my/metric", "regression", pruning=False)
    with pytest.raises(ConfigError, match="val/best is lower-is-better"):
        search.check_direction("maximize", "val/best", "regression", pruning=False)
    with pytest.raises(ConfigError, match="the pruner compares val/acc"):
        search.check_direction("minimize", "test/loss", "classification", pruning=True)
