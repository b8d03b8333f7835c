"""The summary of every multirun (`python train.py -m ...`, any launcher): `sweep.md` in the sweep directory.

Each job (`lightning_meta.cli.Job`) writes `job.json` in its own directory (its overrides, its status, its test
metrics), in whatever process or machine the launcher ran it; at the end of the multirun this Hydra callback, in the
process that launched the sweep, reads those of the jobs it launched and writes one table. A summary never
overwrites another: a second sweep into the same directory writes sweep-2.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# The outcome of the last multirun in this process: {"jobs", "failed", "summary"} (read by lightning_meta.cli).
LAST_OUTCOME: dict[str, Any] = {}


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        LAST_OUTCOME.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        paths = [p for p in sweep_dir.glob("*/job.json") if p.stat().st_mtime >= self.started - 1]
        records = [json.loads(p.read_text()) for p in sorted(paths, key=_job_order)]
        if not records:
            return
        table = summary_table(records)
        path = free_path(sweep_dir / "sweep.md")
        path.write_text(table + "\n")
        print(f"{table}\n[sweep] {len(records)} jobs; summary in {path}")
        failed = sum(r["status"] == "failed" for r in records)
        LAST_OUTCOME.update(jobs=len(records), failed=failed, summary=str(path))


def _job_order(path: Path) -> tuple[int, str]:
    number = path.parent.name.partition("_")[0]
    return (int(number) if number.isdigit() else 1 << 30, path.parent.name)


def free_path(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... (same suffix) that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def summary_table(records: list[dict]) -> str:
    """Markdown: one row per job, the overrides that tell it from the others, its status, its test figures (mean
    ± ci95) and its directory."""
    keys = sorted({k for r in records for k in r.get("metrics", {}) if not k.endswith("_ci95") and "_step" not in k})
    shared = set.intersection(*(set(r.get("overrides", [])) for r in records))
    head = ["job", "overrides", "result", *keys, "output_dir"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, record in enumerate(records):
        metrics = record.get("metrics", {})
        figures = [f"{metrics[k]:.4g}" + (f" ± {metrics[k + '_ci95']:.2g}" if k + "_ci95" in metrics else "")
                   if k in metrics else "" for k in keys]  # fmt: skip
        status = record["status"]
        result = f"failed: {record.get('error', '')[:70]}" if status == "failed" else status
        overrides = " ".join(o for o in record.get("overrides", []) if o not in shared or len(records) == 1)
        lines.append("| " + " | ".join([str(n), overrides, result, *figures, record["output_dir"]]) + " |")
    return "\n".join(lines)
