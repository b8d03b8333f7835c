"""The Optuna sweeper of `-m hparams_search=NAME` (configs/hydra/sweeper/optuna.yaml), on Optuna 5.

Any number of workers (`python train.py -m ...` on one or several machines, each with its own launcher) share one
study in one storage and together run `n_trials` trials: each worker asks the study for up to `n_jobs` trials,
composes and checks each trial's config (`lightning_meta.cli.check_job`), launches it as the sweep's job number
<trial number> (its directory <sweep dir>/<number>_<params>), and tells the study the value its job returned
(`record["metrics"][objective]`), PRUNED when the job was pruned (lightning_meta/search.py, `TrialPruning`), FAIL
when it failed. The storage numbers trials atomically and without gaps, so the first `n_trials` numbers run, each in
the worker that asked it; a trial asked over budget (two workers asking at once for the last places) is told FAIL
with the user attribute not_run and never runs, and does not count (`lightning_meta.search.in_budget`). A trial cut
short (Ctrl-C, a bug elsewhere in its batch) is told FAIL the same way, so that no trial is left running and a rerun
of the command runs another in its place. At its end each worker writes the study's report (search.md).

Hydra imports this module at every start: it imports Hydra only; Optuna and lightning_meta where a search runs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def flat_params(params: Any, prefix: str = "") -> list[str]:
    """`params` as overrides `key=value`: a node `{algorithm.inner.lr: interval(0.01,1)}` (the keys as
    lightning-hydra-template writes them) or nested `{algorithm: {inner: {lr: ...}}}` (what
    `+hydra.sweeper.params.algorithm.inner.lr=...` on the command line makes) give the same override."""
    if params is None:
        return []
    if OmegaConf.is_config(params):
        params = OmegaConf.to_container(params, resolve=True)
    overrides = []
    for key, value in params.items():
        if isinstance(value, Mapping):
            overrides += flat_params(value, f"{prefix}{key}.")
        else:
            text = value if isinstance(value, str) else "null" if value is None else grammar_text(value)
            overrides.append(f"{prefix}{key}={text}")
    return overrides


def grammar_text(value: Any) -> str:
    """`value` written in Hydra's override grammar so that it parses back to itself (strings quoted if needed)."""
    text = Override._get_value_element_as_str(value)
    if isinstance(value, str):
        try:
            same = OverridesParser.create().parse_override(f"k={text}").value() == value
        except Exception:  # noqa: BLE001 - any parse failure means: quote it
            same = False
        if not same:
            text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def to_distribution(override: Override) -> Any:
    """An Optuna distribution for one sweep override, in Hydra's grammar as lightning-hydra-template's Optuna
    configs write it: choice(a,b,...) or a,b,... -> categorical; range(start,stop[,step]) -> int (or float) with that
    step, stop excluded as Hydra's range does; interval(a,b) -> float in [a,b] (int(interval(a,b)) -> int);
    tag(log, interval(...)) or tag(log, range(a,b)) -> on a log scale; shuffle(range(...)) -> categorical."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from lightning_meta.errors import ConfigError

    key, value = override.get_key_element(), override.value()
    where = override.input_line or key
    tags = set(getattr(value, "tags", ()) or ())
    if tags - {"log"}:
        raise ConfigError(f"{where}: a search understands the tag log only (tag(log, interval(a,b)))")
    log = "log" in tags
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        if log:
            raise ConfigError(f"{where}: a choice has no log scale; use tag(log, interval(a,b)) or a range")
        choices = [v if isinstance(v, (str, int, float, bool)) else grammar_text(v) for v in override.sweep_iterator()]
        if not choices:
            raise ConfigError(f"{where}: no value to choose from")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{where} holds no value (its stop is excluded)")
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            if log and step != 1:
                raise ConfigError(f"{where}: a log-scaled range needs step 1")
            return IntDistribution(int(low), int(high), step=int(step), log=log)
        if log:
            raise ConfigError(f"{where}: a float range has no log scale; use tag(log, interval(a,b))")
        return FloatDistribution(float(low), float(high), step=float(step))
    if isinstance(value, IntervalSweep):
        if value.start >= value.end:
            raise ConfigError(f"{where}: the interval is empty (give interval(low, high) with low < high)")
        if log and value.start <= 0:
            raise ConfigError(f"{where}: a log scale needs a positive low end")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{where}: a search takes choice(), range() and interval() (with tag(log, ...)), not this sweep")


def search_space(parsed: Sequence[Override]) -> tuple[dict[str, Any], dict[str, str]]:
    """({key: distribution} of the sweep overrides, {key: override} of the others), in order; a later override of
    a key (the command line after the config's params) replaces an earlier one, whatever its +/++/~ prefix. A
    searched key is named without its prefix: the sweeper adds ++ where the YAML does not list the key."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = to_distribution(override)
        else:
            fixed[key] = override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}"
    return space, fixed


def suggest(trial: Any, name: str, dist: Any) -> Any:
    """The trial's value of `name` from `dist` (through the public suggest API: an enqueued trial's fixed value)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def probes(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Parameter sets that try every choice and both ends of every range once (the others at their first value):
    a search-space mistake (a wrong key, a value the config refuses) shows before the study is touched."""
    from optuna.distributions import CategoricalDistribution

    ends = {k: list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high] for k, d in space.items()}
    base = {k: v[0] for k, v in ends.items()}
    sets = [base]
    for key, values in ends.items():
        sets += [{**base, key: v} for v in values[1:] if v != base[key]]
    return sets


def contiguous(batch: list[tuple[Any, list[str]]]) -> list[list[tuple[Any, list[str]]]]:
    """`batch` (trial, overrides) split into runs of consecutive trial numbers: one launch each, its first job
    numbered by its first trial (another worker may have asked the numbers in between)."""
    runs: list[list[tuple[Any, list[str]]]] = []
    for item in sorted(batch, key=lambda pair: pair[0].number):
        if runs and runs[-1][-1][0].number + 1 == item[0].number:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


class OptunaSweeper(Sweeper):
    """Hydra's sweeper for an Optuna search shared by any number of workers (see the module's docstring).

    Args:
        study_name: the study's name (null: the hparams_search name, or "search").
        storage: the study's storage URL (null: sqlite:///<sweep dir>/optuna.db); postgresql://..., mysql://... or
            journal:///path/file.log (a file on a shared file system) let workers on several machines join one study.
        n_trials: trials the study runs, all workers together.
        n_jobs: trials this worker hands its launcher at once (hydra/launcher=joblib runs them in parallel).
        direction: maximize or minimize the objective.
        objective: the key of the job's returned metrics to optimise (val/best: the best validation val/acc or
            val/mse; or a test metric such as test/acc).
        sampler: {type: tpe or random, seed, and the sampler's own arguments, e.g. n_startup_trials}.
        pruner: {type: median, n_startup_trials, n_warmup_steps, interval_steps} or {type: none}.
        params: the search space, {key: choice(...), range(...), interval(a,b), tag(log, interval(a,b)), or a fixed
            value}.
    """

    def __init__(self, study_name: str | None = None, storage: str | None = None, n_trials: int = 20, n_jobs: int = 1,
                 direction: str = "maximize", objective: str = "val/best", sampler: Any = None, pruner: Any = None,
                 params: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.study_name, self.storage, self.n_trials, self.n_jobs = study_name, storage, n_trials, n_jobs
        self.direction, self.objective = direction, objective
        self.sampler = OmegaConf.to_container(sampler) if OmegaConf.is_config(sampler) else dict(sampler or {})
        self.pruner = OmegaConf.to_container(pruner) if OmegaConf.is_config(pruner) else dict(pruner or {})
        self.params = params
        self._added: set[str] = set()  # searched keys set with ++ (not in the YAML, taken by the node's target)
        self.hydra_context: Any = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------- checks
    def _check_settings(self) -> None:
        from lightning_meta.errors import ConfigError

        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}={value}; give a whole number, 1 or more")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={self.direction}; give maximize or minimize")
        if not self.objective:
            raise ConfigError("hydra.sweeper.objective is empty; give the metric to optimise, e.g. val/best")

    def _compose(self, overrides: list[str]) -> tuple[DictConfig, list[str]]:
        """(the job's config, its overrides): a searched key the YAML does not list but its node's `_target_`
        takes (e.g. algorithm.outer.lr) is set with `++`, as on the command line (`config.with_arguments`)."""
        from lightning_meta.config import hydra_errors, with_arguments

        loader = self.hydra_context.config_loader
        overrides = [f"++{o}" if o.partition("=")[0] in self._added else o for o in overrides]
        with hydra_errors():
            cfg, overrides = with_arguments(lambda o: loader.load_sweep_config(self.config, o), loader, overrides)
        self._added |= {o[2:].partition("=")[0] for o in overrides if o.startswith("++")}
        return cfg, overrides

    def _check(self, overrides: list[str], number: int) -> list[str]:
        """Compose trial `number`'s config as its job will and check it (`check_job`; a val/ objective also needs
        validation); returns the overrides its job is launched with."""
        from lightning_meta import search
        from lightning_meta.cli import check_job
        from lightning_meta.config import import_target
        from lightning_meta.errors import ConfigError

        cfg, overrides = self._compose(list(overrides))
        with read_write(cfg.hydra.job), open_dict(cfg.hydra.job):
            cfg.hydra.job.num = number
        check_job(cfg)
        task = getattr(import_target(cfg.data._target_), "task", "classification")
        pruning = str(self.pruner.get("type", "none")).lower() not in ("none", "null", "nop")
        search.check_direction(self.direction, self.objective, task, pruning)
        if self.objective.startswith("val/") and OmegaConf.select(cfg, "data.val_episodes", default=1) == 0:
            raise ConfigError(f"hydra.sweeper.objective={self.objective} needs validation, but data.val_episodes=0 "
                              "gives none; give data.val_episodes=1 or more, or a test/ objective")  # fmt: skip
        return overrides

    def _script(self) -> str:
        """How the report's command names the entry point (train.py, with the primary config when not train)."""
        assert self.config is not None
        name = str(self.config.hydra.job.config_name)
        if name == "train":
            return "train.py"
        main = [s.path for s in self.config.hydra.runtime.config_sources if s.provider == "main"]
        where = str(main[0]).removeprefix("file://") if main else "."
        return f"train.py --config-path {where} --config-name {name}"

    # ------------------------------------------------------------- the study
    def _open_study(self, url: str, name: str) -> Any:
        import time

        import optuna
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        from lightning_meta import search
        from lightning_meta.errors import ConfigError

        for attempt in range(5):
            try:
                study = optuna.create_study(storage=search.open_storage(url), study_name=name,
                                            sampler=search.make_sampler(self.sampler), direction=self.direction,
                                            pruner=search.make_pruner(self.pruner), load_if_exists=True)  # fmt: skip
                break
            except (StorageInternalError, SQLAlchemyError) as error:  # measured: two workers creating one fresh
                if attempt == 4:  # SQLite file at once collide on its schema table (IntegrityError) in 2 of 3 tries
                    raise ConfigError(f"cannot open the study {name} in {search.shown_url(url)}: "
                                      f"{str(error).splitlines()[0]}") from error  # fmt: skip
                time.sleep(0.5 * (attempt + 1))
            except ImportError as error:  # the database's driver (psycopg2, pymysql, ...)
                raise ConfigError(f"hydra.sweeper.storage={search.shown_url(url)} needs {error.name}: "
                                  f"pip install {error.name}") from error  # fmt: skip
        if study.direction.name.lower() != self.direction:
            raise ConfigError(f"the study {name} in {search.shown_url(url)} {study.direction.name.lower()}s; give "
                              f"hydra.sweeper.direction={study.direction.name.lower()}, or another "
                              "hydra.sweeper.study_name")  # fmt: skip
        return study

    def _ask(self, study: Any, count: int, space: dict[str, Any], fixed: dict[str, str],
             pending: dict[int, Any]) -> list[tuple[Any, list[str]]]:  # fmt: skip
        """Ask `count` trials; those over budget are told FAIL (not_run), the others get their parameters and a
        checked config (a config the checks refuse: told FAIL). Returns [(trial, overrides)] to launch."""
        from optuna.trial import TrialState

        from lightning_meta import search
        from lightning_meta.errors import UserError

        asked = []
        for _ in range(count):
            trial = study.ask()
            pending[trial.number] = trial
            asked.append(trial)
        trials = study.get_trials(deepcopy=False)
        batch = []
        for trial in asked:
            if not search.in_budget(trials, trial.number, self.n_trials):
                trial.set_user_attr(search.NOT_RUN, "over budget")
                self._finish(study, trial, pending, state=TrialState.FAIL)
                print(f"[search] trial {trial.number}: asked after the study held n_trials={self.n_trials} (another "
                      "worker asked at the same time); told failed (not_run), not run")  # fmt: skip
                continue
            study.sampler = search.make_sampler(self.sampler, trial.number)
            params = {name: suggest(trial, name, dist) for name, dist in space.items()}
            overrides = [*fixed.values(), *(f"{k}={grammar_text(v)}" for k, v in params.items())]
            try:
                overrides = self._check(overrides, trial.number)
            except UserError as error:
                print(f"error: trial {trial.number}: {error}", file=sys.stderr)
                trial.set_user_attr("error", str(error))
                self._finish(study, trial, pending, state=TrialState.FAIL)
                continue
            batch.append((trial, overrides))
        return batch

    @staticmethod
    def _finish(study: Any, trial: Any, pending: dict[int, Any], **tell: Any) -> None:
        study.tell(trial, **tell)
        pending.pop(trial.number, None)

    def _tell(self, study: Any, trial: Any, ret: Any, pending: dict[int, Any]) -> BaseException | bool:
        """Tell the study what trial's job returned; returns the job's exception when it raised one (a bug), True
        when the job was stopped on request (Ctrl-C, SIGTERM: the run returns no metrics), else False."""
        from optuna.trial import TrialState

        from lightning_meta import search

        try:
            record = ret.return_value
        except Exception as error:  # noqa: BLE001 - a bug in the job: fail the trial, re-raised after the batch
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
            self._finish(study, trial, pending, state=TrialState.FAIL)
            return error
        status, metrics = str(record.get("status", "")), record.get("metrics") or {}
        trial.set_user_attr("status", status)
        trial.set_user_attr("output_dir", str(record.get("output_dir", "")))
        trial.set_user_attr("overrides", list(record.get("overrides", [])))
        value = metrics.get(self.objective)
        if status == "pruned":
            self._finish(study, trial, pending, state=TrialState.PRUNED)
        elif status == "ok" and not metrics:  # train() stopped on request before its meta-test
            trial.set_user_attr(search.NOT_RUN, "stopped on request")
            self._finish(study, trial, pending, state=TrialState.FAIL)
            return True
        elif status == "failed" or not search.finite(value):
            error = record.get("error") or (f"no finite {self.objective} in the job's metrics ({value}); its keys: "
                                            f"{', '.join(sorted(metrics)) or 'none'}")  # fmt: skip
            trial.set_user_attr("error", str(error)[:1000])
            self._finish(study, trial, pending, state=TrialState.FAIL)
        else:
            self._finish(study, trial, pending, values=float(value))
            best = study.best_trial
            print(f"[search] trial {trial.number}: {self.objective}={float(value):.6g} (best: trial {best.number}, "
                  f"{best.value:.6g})")  # fmt: skip
            return False
        print(f"[search] trial {trial.number}: {'pruned' if status == 'pruned' else 'failed'}")
        return False

    # ------------------------------------------------------------- the sweep
    def check_space(self, arguments: list[str]) -> tuple[list[Override], dict[str, Any], dict[str, str]]:
        """(the parsed overrides, {key: distribution}, {key: fixed value}) of the sweeper's params and the command
        line, every choice and both ends of every range composed and checked (`probes`)."""
        from lightning_meta.config import hydra_errors
        from lightning_meta.errors import ConfigError

        with hydra_errors():
            parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
            parsed = parser.parse_overrides([*flat_params(self.params), *arguments])
        space, fixed = search_space(parsed)
        if not space:
            raise ConfigError("the search has nothing to search: give hparams_search=NAME (configs/hparams_search), "
                              "hydra.sweeper.params, or a sweep such as 'algorithm.inner.lr=tag(log,interval(1e-3,1))'")
        for values in probes(space):
            try:
                self._check([*fixed.values(), *(f"{k}={grammar_text(v)}" for k, v in values.items())], 0)
            except ConfigError as error:
                shown = " ".join(f"{k}={grammar_text(v)}" for k, v in values.items())
                raise ConfigError(f"the search space fails its check with {shown}: {error}") from error
        return parsed, space, fixed

    def sweep(self, arguments: list[str]) -> Any:
        from lightning_meta import search

        study, url, name, space, fixed = self._open(arguments)
        print(f"[search] study {name} in {search.shown_url(url)}: {self.direction} {self.objective} over "
              f"{', '.join(space)}; n_trials={self.n_trials} (all workers), n_jobs={self.n_jobs}")  # fmt: skip
        returns, stop = self._run_trials(study, space, fixed)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        path = search.write_report(study, sweep_dir, self.objective, self.n_trials, url, self._script())
        print(f"[search] study {name}: report in {path}")
        if isinstance(stop, BaseException):
            raise stop
        if stop:
            print("[search] a trial was stopped on request: this worker asks for no more (rerun the command to go on)")
        return returns

    def _open(self, arguments: list[str]) -> tuple[Any, str, str, dict, dict]:
        """Check everything, then (the study, its storage URL, its name, the search space, the fixed values);
        every job's Hydra config gets the storage and the study name (its pruning callback joins the study)."""
        from hydra_plugins.lightning_meta.sweepers import name_jobs_by_swept_keys
        from lightning_meta import search

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._check_settings()
        parsed, space, fixed = self.check_space(arguments)
        name_jobs_by_swept_keys(self.config, parsed)  # job directories <trial number>_<searched key=value,...>
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        url = search.storage_url(self.storage, sweep_dir)
        name = str(self.study_name or self.config.hydra.runtime.choices.get("hparams_search") or "search")
        with read_write(self.config.hydra.overrides), open_dict(self.config.hydra.overrides):  # every job sees them
            self.config.hydra.overrides.hydra += [f"hydra.sweeper.storage={grammar_text(url)}",
                                                  f"hydra.sweeper.study_name={grammar_text(name)}"]  # fmt: skip
        search.make_pruner(self.pruner), search.make_sampler(self.sampler)  # their settings' mistakes, now
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return self._open_study(url, name), url, name, space, fixed

    def _run_trials(self, study: Any, space: dict, fixed: dict) -> tuple[list[Any], BaseException | bool]:
        """Ask, launch and tell until the study holds n_trials counted trials; (the launchers' results, a job's
        exception (a bug, raised after the report) or True when a job was stopped on request, else False)."""
        from optuna.trial import TrialState

        from lightning_meta import search

        returns: list[Any] = []
        pending: dict[int, Any] = {}  # asked by this worker and not yet told
        stop: BaseException | bool = False
        try:
            while not stop:
                trials = study.get_trials(deepcopy=False)
                held = sum(t.state != TrialState.WAITING and search.counted(t) for t in trials)
                if held >= self.n_trials:
                    break
                batch = self._ask(study, min(self.n_jobs, self.n_trials - held), space, fixed, pending)
                for run in contiguous(batch):
                    if stop:  # the rest of the batch is told failed below
                        break
                    results = self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0].number)
                    returns.append(results)
                    for (trial, _), ret in zip(run, results, strict=True):
                        told = self._tell(study, trial, ret, pending)
                        if isinstance(told, BaseException) and not isinstance(stop, BaseException):
                            stop = told
                        elif told is True and stop is False:
                            stop = True
        finally:  # interrupted or a bug: no trial of this worker is left running in the study
            for trial in list(pending.values()):
                trial.set_user_attr(search.NOT_RUN, "its worker stopped")
                self._finish(study, trial, pending, state=TrialState.FAIL)
        return returns, stop
