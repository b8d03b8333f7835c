"""The sweeper of `-m` (configs/hydra/sweeper/checked.yaml): Hydra's basic sweeper, checking every job first."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, open_dict, read_write


class CheckedSweeper(BasicSweeper):
    """Every combination of the sweep, composed and checked against the code (`lightning_meta.cli.check_job`)
    before the sweep directory is made and the first job starts."""

    def sweep(self, arguments: list[str]) -> Any:
        from lightning_meta.cli import check_job
        from lightning_meta.config import hydra_errors, with_arguments

        loader = self.hydra_context.config_loader
        with hydra_errors():
            parsed = OverridesParser.create(config_loader=loader).parse_overrides([*self._parse_config(), *arguments])
            batches = self.split_arguments(parsed, None)
        name_jobs_by_swept_keys(self.config, parsed)
        added: set[str] = set()  # swept keys the YAML does not list but their node's _target_ takes
        for number, job in enumerate(job for batch in batches for job in batch):
            with hydra_errors():
                cfg, composed = with_arguments(lambda o: loader.load_sweep_config(self.config, o), loader, list(job))
            added |= {o[2:].partition("=")[0] for o in composed if o.startswith("++")}
            with read_write(cfg.hydra.job), open_dict(cfg.hydra.job):
                cfg.hydra.job.num = number
            check_job(cfg)
        return super().sweep([f"++{a}" if a.partition("=")[0] in added else a for a in arguments])


def name_jobs_by_swept_keys(config: DictConfig, parsed: list[Override]) -> None:
    """Job directories `<num>_<key=value,...>` name only the swept keys (hydra.job.override_dirname without the
    keys every job shares)."""
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    keys = {*config.hydra.job.config.override_dirname.exclude_keys}
    keys |= {o.key_or_group for o in parsed if o.key_or_group not in swept}
    with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):  # jobs are composed from these
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(keys))}]")
