"""Learning curves of the 30-minute Omniglot presets against wall time, beside the papers' numbers: the figure of
docs/results.md.

Usage: python benchmarks/results_curves.py RUN_DIR [RUN_DIR ...] [--figure docs/results_curves] [--tensorboard DIR]

Each RUN_DIR is a finished `python train.py experiment=<preset> output_dir=RUN_DIR`. From its TensorBoard event file
the script reads `val/acc` with the wall-clock time of each validation, counted from the run's first event (the
logger opens as training starts, so the start-up before it, a few seconds, is not on the axis); from
test_metrics.json the meta-test accuracy of the best checkpoint, drawn as a point at the run's last event. The
papers' numbers are dashed lines in each setting's colour: MAML's Table 1 (Finn et al., 2017). Writes
`<figure>.png`, `<figure>.csv` (one row per validation) and, in `<tensorboard>`, the figure and each curve as
`curve/<ways>w<shots>s/val_acc` with the elapsed seconds as its step.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lightning_meta.loggers import render

# MAML (Finn et al., 2017, Table 1), Omniglot, transductive batch norm: (ways, shots) -> accuracy %.
PAPER = {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9}
COLUMNS = ["setting", "algorithm", "seconds", "step", "val_acc"]


def read_run(run: Path) -> dict:
    """{setting, algorithm, ways, shots, curve: [(seconds, step, val_acc)], test: (seconds, acc, ci95)}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = OmegaConf.load(run / "config.yaml")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    if "val/acc" not in events.Tags()["scalars"]:
        raise FileNotFoundError(f"{run / 'tensorboard'} has no val/acc: give the directory of a finished run")
    scalars = [e for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    start, end = min(e.wall_time for e in scalars), max(e.wall_time for e in scalars)
    curve = [(e.wall_time - start, e.step, e.value) for e in events.Scalars("val/acc")]
    test = json.loads((run / "test_metrics.json").read_text())
    ways, shots = int(config.data.ways), int(config.data.shots)
    return dict(setting=f"{ways}w{shots}s", algorithm=config.selection.algorithm, ways=ways, shots=shots,
                curve=curve, test=(end - start, test["test/acc"], test.get("test/acc_ci95", 0.0)))  # fmt: skip


def figure(runs: list[dict]):
    """Validation accuracy against minutes, one colour per setting; the test point at the end; the paper dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    for colour, run in enumerate(runs):
        label = f"{run['ways']}-way {run['shots']}-shot ({run['algorithm']})"
        minutes = [s / 60 for s, _, _ in run["curve"]]
        ax.plot(minutes, [100 * v for _, _, v in run["curve"]], color=f"C{colour}", label=label, linewidth=1.6)
        seconds, acc, ci95 = run["test"]
        ax.errorbar([seconds / 60], [100 * acc], yerr=[100 * ci95], fmt="o", color=f"C{colour}", capsize=3)
        paper = PAPER.get((run["ways"], run["shots"]))
        if paper is not None:
            ax.axhline(paper, color=f"C{colour}", linestyle="--", linewidth=0.9, alpha=0.8)
    ax.set(xlabel="wall time (minutes, from the start of training)", ylabel="accuracy (%)", ylim=(80, 100))
    ax.set_title("Omniglot, 30-minute presets on a 2-core CPU: validation (lines), meta-test of the best checkpoint "
                 "(points)\ndashed: MAML's paper (Finn et al., 2017, Table 1)", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (output_dir)")
    parser.add_argument("--figure", type=Path, default=Path("docs/results_curves"), help="writes <figure>.png/.csv")
    parser.add_argument("--tensorboard", type=Path, default=None, help="also log the curves and figure here")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "test_metrics.json").is_file()]
    if missing:
        print(f"error: {', '.join(missing)}: no test_metrics.json; give finished run directories", file=sys.stderr)
        return 2
    runs = [read_run(r) for r in args.runs]
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    with open(args.figure.with_suffix(".csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for run in runs:
            rows = run["curve"]
            writer.writerows([run["setting"], run["algorithm"], f"{s:.1f}", step, f"{v:.6f}"] for s, step, v in rows)
    image = render(figure(runs))
    from PIL import Image

    Image.fromarray(image).save(args.figure.with_suffix(".png"))
    if args.tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(args.tensorboard)) as writer:
            for run in runs:
                for seconds, _, value in run["curve"]:
                    writer.add_scalar(f"curve/{run['setting']}/val_acc", value, int(seconds))
            writer.add_image("results/curves", image, 0, dataformats="HWC")
    for run in runs:
        seconds, acc, ci95 = run["test"]
        print(f"{run['setting']} {run['algorithm']}: test/acc {100 * acc:.2f} ± {100 * ci95:.2f} % at "
              f"{seconds / 60:.1f} min (paper {PAPER.get((run['ways'], run['shots']))} %)")  # fmt: skip
    print(f"wrote {args.figure.with_suffix('.png')} and {args.figure.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
