"""`[STOP_AT=N] python tests/scale/ddp_script.py <train.py arguments>`: train.py through its Hydra entry point
(`cli.main`), plus the test-only callbacks of the scale tests (per-rank parameters, a simulated preemption at step
N). Lightning's DDP launcher re-runs this same command line once per extra process, with Hydra's run directory."""

from __future__ import annotations

import os
import sys

from scale_runs import SaveRankParams, StopAt

from lightning_meta import cli
from lightning_meta.run import train


def task(cfg):
    stop = os.environ.get("STOP_AT")
    return train(cfg, extra_callbacks=[SaveRankParams(), *([StopAt(int(stop))] if stop else [])])


if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:], task))  # train.py's entry: one-line errors, the process group closed
