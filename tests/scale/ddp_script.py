"""`python tests/scale/ddp_script.py [--stop-at=N] <train.py arguments>`: train.py's `train()` plus the test-only
callbacks of the scale tests (per-rank parameters, a simulated preemption at step N). Lightning's DDP launcher
re-runs this same command line once per extra process."""

from __future__ import annotations

import sys

from scale_runs import SaveRankParams, StopAt

from lightning_meta.cli import guarded
from lightning_meta.config import load_config
from lightning_meta.run import train


def main(argv: list[str]) -> None:
    stop = [int(a.split("=", 1)[1]) for a in argv if a.startswith("--stop-at=")]
    callbacks = [SaveRankParams(), *(StopAt(step) for step in stop)]
    train(load_config([a for a in argv if not a.startswith("--stop-at=")]), extra_callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(guarded(lambda: main(sys.argv[1:])))  # train.py's entry: one-line errors, the process group closed
