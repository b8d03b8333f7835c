"""Optuna searches (`python train.py -m hparams_search=NAME`): what a trial's job needs, and the report.

The sweeper (hydra_plugins/lightning_meta/optuna_sweeper.py, configs/hydra/sweeper/optuna.yaml) asks a study in a
shared storage for trials and launches trial k as the sweep's job number k, through whatever launcher Hydra uses.
The job finds out from its own Hydra config that it is a trial (`current_trial`: the `sweeper` node names the
storage and the study, `job.num` the trial), and `TrialPruning` reports its validation metric (val/acc, or val/mse
for regression) to the trial through the storage at each validation; when the study's pruner says so it raises
`optuna.TrialPruned`, which `lightning_meta.cli.Job` records as status "pruned". At the end of each worker's sweep
`write_report` writes search.md (the best trial as a command to rerun, every trial), the plots as PNG files and the
same figures in TensorBoard (<sweep dir>/tensorboard).

Optuna is imported only where a search needs it: importing this module (run.py does) costs nothing else.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl

from lightning_meta.errors import ConfigError

SWEEPER_TARGET = "hydra_plugins.lightning_meta.optuna_sweeper.OptunaSweeper"
# The user attribute of a trial told FAIL without having run to its end, which the budget does not count (a rerun of
# the search runs another in its place): "over budget" (asked after the study held n_trials: another worker asked at
# the same moment), "its worker stopped" (Ctrl-C or a bug in another job of its batch), "stopped on request".
NOT_RUN = "not_run"
JOURNAL = "journal://"
PRUNER_UNITS = ("steps", "seconds")  # what a trial's reports are indexed by: meta-iterations, or seconds of training
REPORTED_AT = "reported_at"  # the user attribute of a trial whose reports are at seconds of training


# ----------------------------------------------------------------- storage, study, sampler, pruner
def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The storage's URL as every worker and job opens it: null -> sqlite:///<sweep dir>/optuna.db; a relative
    SQLite or journal file made absolute (jobs may run in another working directory)."""
    if not storage:
        return f"sqlite:///{Path(sweep_dir).absolute() / 'optuna.db'}"
    storage = str(storage)
    if storage.startswith(JOURNAL):
        path = storage[len(JOURNAL):]
        if not path:
            raise ConfigError(f"hydra.sweeper.storage={storage} names no file; give journal:///path/to/file.log")
        return JOURNAL + str(Path(path).expanduser().absolute())
    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(storage[len("sqlite:///"):]).expanduser().absolute())
    if "://" not in storage:
        raise ConfigError(f"hydra.sweeper.storage={storage} is not a URL; give null (sqlite:///<sweep dir>/optuna.db), "
                          "sqlite:///path.db, postgresql://user:password@host/db, mysql://... or "
                          "journal:///path/to/file.log")  # fmt: skip
    return storage


def shown_url(url: str) -> str:
    """`url` without its password, for reports and messages."""
    if url.startswith(JOURNAL):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str) -> Any:
    """The Optuna storage behind `url`: a journal file (`journal:///path`, any shared file system: a lock file
    next to it serialises the writers) or a database by SQLAlchemy URL. SQLite waits up to a minute for a lock
    rather than failing at once when workers and jobs write together."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_pruner(spec: Mapping[str, Any] | None) -> Any:
    """`{type: median, unit: steps, n_startup_trials, n_warmup_steps, interval_steps}` -> Optuna's MedianPruner,
    whose steps are meta-iterations (trainer.global_step at each validation); `{type: median, unit: seconds,
    n_startup_trials, n_warmup_steps}` -> `BudgetMedianPruner`, whose steps are seconds of training, for trials
    that trainer.max_time stops; `{type: none}` or null -> NopPruner."""
    import optuna

    spec = dict(spec or {})
    kind = str(spec.pop("type", "none")).lower()
    unit = str(spec.pop("unit", "steps")).lower()
    if kind in ("none", "null", "nop"):
        return optuna.pruners.NopPruner()
    if kind != "median":
        raise ConfigError(f"hydra.sweeper.pruner.type={kind}; give median or none")
    if unit not in PRUNER_UNITS:
        raise ConfigError(f"hydra.sweeper.pruner.unit={unit}; give steps (meta-iterations) or seconds (of training)")
    try:
        if unit == "seconds":
            from lightning_meta.pruning import BudgetMedianPruner

            return BudgetMedianPruner(**spec)
        return optuna.pruners.MedianPruner(**spec)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"hydra.sweeper.pruner: {error} (keys: type, unit, n_startup_trials, n_warmup_steps, "
                          "and with unit=steps interval_steps)") from error  # fmt: skip


def make_sampler(spec: Mapping[str, Any] | None, number: int = 0) -> Any:
    """`{type: tpe|random, seed, ...}` -> the sampler that draws trial `number`'s parameters, seeded with
    seed + number: a seeded search samples each trial the same way given the trials before it, and two workers
    sharing a seed do not draw the same parameters (one sampler seeded once per worker would)."""
    import optuna

    spec = dict(spec or {})
    kind = str(spec.pop("type", "tpe")).lower()
    seed = spec.pop("seed", None)
    seed = None if seed is None else int(seed) + number
    if kind == "random":
        spec.pop("n_startup_trials", None)  # optuna.yaml's TPE setting, which sampler.type=random leaves behind
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if kind not in classes:
        raise ConfigError(f"hydra.sweeper.sampler.type={kind}; give tpe or random")
    try:
        return classes[kind](seed=seed, **spec)
    except TypeError as error:
        raise ConfigError(f"hydra.sweeper.sampler: {error}") from error


# ----------------------------------------------------------------- the job's side: is it a trial, pruning
class TrialRef(NamedTuple):
    storage: str  # URL
    study_name: str
    number: int
    pruner: dict


def current_trial() -> TrialRef | None:
    """The trial this process's job is, when an OptunaSweeper launched it (under -m, with any launcher: the job's
    Hydra config holds the sweeper node, with the storage and study name the sweeper resolved, and job.num is the
    trial number); else None."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.get("sweeper")
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN" or sweeper is None or sweeper.get("_target_") != SWEEPER_TARGET:
        return None
    pruner = OmegaConf.to_container(sweeper.pruner, resolve=True) if sweeper.get("pruner") is not None else {}
    return TrialRef(str(sweeper.storage), str(sweeper.study_name), int(hydra_cfg.job.num), pruner)


def trial_callbacks(task: str, validate: bool) -> list[pl.Callback]:
    """The callbacks a search trial adds to its run: `TrialPruning` when this job is a trial and validates."""
    trial = current_trial()
    if trial is None or not validate:
        return []
    from lightning_meta.metrics import EpisodeMetrics

    return [TrialPruning(trial, f"val/{EpisodeMetrics.metric_name(task)}")]


class TrialPruning(pl.Callback):
    """Reports `monitor` (val/acc or val/mse) to the trial at each validation, through the shared storage, at
    step trainer.global_step (or, with pruner.unit=seconds, the seconds of training so far), and raises
    `optuna.TrialPruned` when the study's pruner prunes the trial (rank 0 asks; every rank gets its answer, so a
    DDP job stops together). Raising ends the run at once: no further training, no checkpoint of the pruned
    validation, no meta-test. (The sweeper has checked that the study's direction agrees with the metric's,
    `check_direction`.)

    Args:
        trial: which trial of which study in which storage, and the study's pruner settings.
        monitor: the logged validation metric to report.
    """

    def __init__(self, trial: TrialRef, monitor: str) -> None:
        self.ref, self.monitor = trial, monitor
        self.trial: Any = None
        self.seconds = str(trial.pruner.get("unit", "steps")).lower() == "seconds"
        self.started = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()

    def step(self, trainer: pl.Trainer) -> int:
        """Where this validation's report goes: the meta-iteration, or (pruner.unit=seconds) the whole seconds of
        training so far, validation included, which is what trainer.max_time counts."""
        return int(time.monotonic() - self.started) if self.seconds else int(trainer.global_step)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        import optuna

        storage = open_storage(self.ref.storage)
        study = optuna.load_study(study_name=self.ref.study_name, storage=storage, pruner=make_pruner(self.ref.pruner))
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.ref.study_name), self.ref.number
        )
        self.trial = optuna.trial.Trial(study, trial_id)
        if self.seconds:  # for the report: these steps are seconds
            self.trial.set_user_attr(REPORTED_AT, "seconds")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, message = False, ""
        if self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                value, step = float(value), self.step(trainer)
                self.trial.report(value, step)
                prune = self.trial.should_prune()
                at = f"{step} s" if self.seconds else f"step {step}"
                message = f"trial {self.ref.number} pruned at {at}: {self.monitor}={value:.6g}"
        if trainer.world_size > 1:
            prune, message = trainer.strategy.broadcast((prune, message), src=0)
        if prune:
            import optuna

            raise optuna.TrialPruned(message)


# ----------------------------------------------------------------- the report
def check_direction(direction: str, objective: str, task: str, pruning: bool) -> None:
    """The study's direction must agree with the objective's sense (val/best: val/acc up, val/mse down; */acc up;
    */mse, */loss down), and, when pruning, with the validation metric the pruner compares (the task's)."""
    up = task == "classification"
    sense = up if objective == "val/best" else True if objective.endswith("/acc") else False if objective.endswith(
        ("/mse", "/loss")) else None  # fmt: skip
    wanted = "maximize" if up else "minimize"
    if sense is not None and direction != ("maximize" if sense else "minimize"):
        raise ConfigError(f"hydra.sweeper.direction={direction}, but {objective} is "
                          f"{'higher' if sense else 'lower'}-is-better here; give hydra.sweeper.direction="
                          f"{'maximize' if sense else 'minimize'}")  # fmt: skip
    if pruning and direction != wanted:
        raise ConfigError(f"the pruner compares val/{'acc' if up else 'mse'}, where {'higher' if up else 'lower'} is "
                          f"better, but the study {direction}s {objective}; give hydra.sweeper.pruner.type=none, or "
                          f"an objective to {wanted}")  # fmt: skip


def in_budget(trials: list[Any], number: int, n_trials: int) -> bool:
    """Whether trial `number` is one of the study's first `n_trials` (so it runs): fewer than `n_trials` trials
    numbered below it count (`counted`). Trial numbers are unique and gapless (the storage assigns them atomically,
    in the order the trials were asked), and a trial below `number` whose worker has not decided yet counts, which
    is safe: were that trial over budget, `number` would be too."""
    below = sum(1 for t in trials if t.number < number and counted(t))
    return below < n_trials


def counted(trial: Any) -> bool:
    """Whether `trial` takes one of the study's n_trials places: every trial but the not-run ones (NOT_RUN)."""
    return not trial.user_attrs.get(NOT_RUN)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def best_command(trial: Any, script: str = "train.py") -> str:
    """`python train.py <the trial's overrides>` (its output_dir left out: the rerun writes a run of its own)."""
    overrides = [o for o in trial.user_attrs.get("overrides", []) if not o.lstrip("+~").startswith("output_dir=")]
    if not overrides:  # a trial told by another tool: its parameters only
        overrides = [f"{k}={v}" for k, v in trial.params.items()]
    return " ".join(["python", script, *(shlex.quote(o) for o in overrides)])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plots(study: Any, objective: str, out: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """{name: matplotlib figure} of the plots that can be drawn, {name: why not} of the others."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # no display needed; an interactive session keeps its own backend
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figures, missing = {}, {}
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna's plots set the ggplot style: not for others
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            figures["optimization_history"] = plots.plot_optimization_history(study, target_name=objective).figure
        else:
            missing["optimization_history"] = "no complete trial yet"
        if len(complete) >= 2:
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                ax = plots.plot_param_importances(study, evaluator=evaluator, target_name=objective)
                figures["param_importances"] = ax.figure
            except Exception as error:  # noqa: BLE001 - e.g. every trial with the same params: the report goes on
                missing["param_importances"] = f"not computable: {type(error).__name__}: {error}"
        else:
            missing["param_importances"] = f"need 2 or more complete trials (have {len(complete)})"
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            figures["intermediate_values"] = plots.plot_intermediate_values(study).figure
    return figures, missing


def write_report(study: Any, sweep_dir: str | Path, objective: str, n_trials: int, url: str,
                 script: str = "train.py") -> Path:  # fmt: skip
    """search.md in `sweep_dir` (replaced atomically: every worker of the study rewrites it at its end with the
    study as it then is): the best trial as a command to rerun and its value, one row per trial (number, state,
    value, parameters, duration, directory), the number pruned, and the plots (optimisation history, parameter
    importances, intermediate values) as PNG files beside it and as figures in <sweep dir>/tensorboard."""
    from optuna.trial import TrialState

    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    shown = [t for t in trials if counted(t)]
    counts = {s: sum(t.state == s for t in shown) for s in TrialState}
    over = len(trials) - len(shown)
    lines = [
        f"# Search `{study.study_name}`",
        "",
        f"{study.direction.name.lower()} `{objective}`; storage `{shown_url(url)}`; n_trials={n_trials}",
        "",
        f"trials: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running"
        + (f", {counts[TrialState.WAITING]} waiting" if counts[TrialState.WAITING] else "")
        + (f"; {over} more told failed without running to their end and not counted (not_run)" if over else ""),
        "",
    ]
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        command = best_command(best, script)
        lines += [f"## Best: trial {best.number}, {objective} = {best.value:.6g}", "", "```", command, "```", ""]
    else:
        lines += ["## Best: none yet (no complete trial)", ""]
    lines += _trial_table(trials, shown, objective)
    lines += _plots_written(study, objective, out, counts[TrialState.COMPLETE] + counts[TrialState.PRUNED])
    path = out / "search.md"
    _atomic_write(path, "\n".join(lines) + "\n")
    return path


def _trial_table(trials: list, shown: list, objective: str) -> list[str]:
    """Markdown rows, one per counted trial: number, state, value (or where it was pruned, or why it failed),
    parameters, duration, directory."""
    from optuna.trial import TrialState

    names = sorted({k for t in trials for k in t.params})
    head = ["trial", "state", objective, *names, "duration (s)", "directory"]
    lines = ["## Trials", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in shown:
        if t.state == TrialState.PRUNED and t.intermediate_values:
            at = f"{t.last_step} s" if t.user_attrs.get(REPORTED_AT) == "seconds" else f"step {t.last_step}"
            value = f"pruned at {at} ({_fmt(t.intermediate_values[t.last_step])})"
        elif t.state == TrialState.FAIL:
            value = "failed: " + str(t.user_attrs.get("error", ""))[:80].replace("|", "/").replace("\n", " ")
        else:
            value = _fmt(t.value)
        duration = _fmt(t.duration.total_seconds()) if t.duration is not None else ""
        cells = [str(t.number), t.state.name.lower(), value, *(_fmt(t.params.get(n)) for n in names), duration,
                 str(t.user_attrs.get("output_dir", ""))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plots_written(study: Any, objective: str, out: Path, finished: int) -> list[str]:
    """The study's plots as PNG files in `out` (each replaced atomically) and as figures in out/tensorboard at step
    `finished`; the markdown lines that show them, or say why one is missing."""
    from torch.utils.tensorboard import SummaryWriter

    figures, missing = _plots(study, objective, out)
    lines = ["", "## Plots", ""]
    with SummaryWriter(log_dir=str(out / "tensorboard")) as writer:
        for name, fig in figures.items():
            png = out / f"{name}.png"
            tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp.png")
            fig.savefig(tmp, dpi=100, bbox_inches="tight")
            os.replace(tmp, png)
            writer.add_figure(f"search/{name}", fig, global_step=finished, close=True)
            lines.append(f"![{name}]({png.name})")
    lines += [f"- {name}: {why}" for name, why in missing.items()]
    return [*lines, "", f"TensorBoard: `tensorboard --logdir {out / 'tensorboard'}`"]


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
