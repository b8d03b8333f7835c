"""Reptile's gradient-combination study (Nichol et al., 2018, section 6.2): train the ten `gradcomb_*` presets one
after another through `train()`, scoring the meta-weights on fixed meta-test episodes every few meta-iterations,
then draw test accuracy against meta-iterations, one curve per combination.

Usage: python benchmarks/gradient_combinations.py --steps N [--eval-every M] [--episodes E] [--presets g1,g2,...]
       [--out DIR] [--figure PATH_STEM] [key=value ...]

The curve: a `TestCurve` callback evaluates the meta-weights, exactly as `test/acc` does (the preset's `eval_inner`,
non-transductive), on meta-test episodes 0..E-1 at step 0, every M meta-iterations and at the end; the same
episodes every time and in every run, so the curves differ by the meta-weights alone. It logs `curve/test_acc` (and
`curve/test_acc_ci95`) to the run's TensorBoard; supervised-reptile scored one fresh test task (5 queries) after
every meta-iteration instead (`--eval-interval 1`), a noisier curve. Runs land in `<out>/<preset>`; a run that already
has its `test_metrics.json` is not trained again (rerun the command to finish an interrupted study). The figure is
drawn from the event files into `<figure>.png` and `<figure>.csv` and logged to `<out>/tensorboard`.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lightning_meta.config import load_config
from lightning_meta.data.episode import Episode
from lightning_meta.metrics import mean_ci95
from lightning_meta.review import render
from lightning_meta.run import train

# The README's order (supervised-reptile, "Comparing different inner-loop gradient combinations").
PRESETS = ("g1", "g1_g2", "half_g1_g2", "g2", "g1_g2_g3", "third_g1_g2_g3", "g3", "g4", "g1_g2_g3_g4",
           "fourth_g1_g2_g3_g4")  # fmt: skip
TAG = "curve/test_acc"
COLUMNS = ("preset", "combination", "meta_iteration", "test_acc", "test_acc_ci95")


class TestCurve(pl.Callback):
    """Scores the meta-weights on meta-test episodes 0..`episodes`-1 at step 0, every `every` meta-iterations and
    at the last one, and logs `curve/test_acc` and `curve/test_acc_ci95` at that step (one process only)."""

    def __init__(self, every: int, episodes: int) -> None:
        if every < 1 or episodes < 1:
            raise ValueError(f"--eval-every={every} and --episodes={episodes}; both must be at least 1")
        self.every, self.episodes = every, episodes
        self.batches: list[Episode] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.world_size > 1:
            raise ValueError("the study's test curve runs in one process; use trainer.devices=1")
        self.batches = list(trainer.datamodule.eval_batches("test", self.episodes))  # fixed by the data seed
        self._score(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0 or trainer.global_step == trainer.max_steps:
            self._score(trainer, pl_module)

    def _score(self, trainer: pl.Trainer, pl_module) -> None:
        accuracies = []
        with torch.enable_grad():  # evaluation adapts
            for batch in self.batches:
                batch = trainer.precision_plugin.convert_input(trainer.strategy.batch_to_device(batch))
                out = pl_module.map_tasks(pl_module.evaluate_task, pl_module.params(), batch)
                accuracies.append(out["query_metric"].detach().cpu())
        mean, ci95 = mean_ci95(torch.cat(accuracies))
        for logger in trainer.loggers:
            logger.log_metrics({TAG: mean, f"{TAG}_ci95": ci95}, step=trainer.global_step)


def label(algorithm) -> str:
    """The paper's name of a run's meta-gradient from its algorithm config: "g1+g2", "(g1+g2)/2", "g3", ..."""
    chosen = algorithm.combination or list(range(1, algorithm.inner.steps + 1))
    name = "+".join(f"g{i}" for i in chosen)
    return f"({name})/{len(chosen)}" if algorithm.scale == "mean" and len(chosen) > 1 else name


def run(names, steps: int, every: int, episodes: int, out: Path, overrides=()) -> None:
    """Train each preset into `<out>/<name>` with the test curve, skipping runs that have finished."""
    for name in names:
        folder = out / name
        if (folder / "test_metrics.json").exists():
            print(f"[study] {name}: finished already, kept", flush=True)
            continue
        cfg = load_config([
            f"experiment=gradcomb_{name}", f"trainer.max_steps={steps}", f"data.test_episodes={episodes}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"output_dir={folder}",
            *overrides,
        ])  # fmt: skip
        start = time.monotonic()
        metrics = train(cfg, extra_callbacks=[TestCurve(every, episodes)])
        tested = f"test/acc {metrics['test/acc']:.4f}" if "test/acc" in metrics else "no meta-test"
        print(f"[study] {name}: {tested} after {steps} meta-iterations, {time.monotonic() - start:.0f} s", flush=True)


def read_curves(out: Path, names) -> list[dict]:
    """One row per (run, evaluation) from the runs' TensorBoard event files, in COLUMNS."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for name in names:
        events = EventAccumulator(str(out / name / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        if TAG not in events.Tags()["scalars"]:
            raise FileNotFoundError(f"{out / name / 'tensorboard'} has no {TAG}; train it with this command first")
        combination = label(OmegaConf.load(out / name / "config.yaml").algorithm)
        ci95 = {e.step: e.value for e in events.Scalars(f"{TAG}_ci95")}
        last = {e.step: e for e in events.Scalars(TAG)}  # a resumed run logs some steps twice: keep the last
        for step, event in sorted(last.items()):
            rows.append(dict(preset=name, combination=combination, meta_iteration=step, test_acc=event.value,
                             test_acc_ci95=ci95.get(step, float("nan"))))  # fmt: skip
    return rows


def figure(rows: list[dict], episodes: int):
    """Test accuracy against meta-iterations, one curve per combination: the colour is the number of inner steps,
    solid a sum, dashed a mean, dotted a single last gradient (first-order MAML)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for preset in dict.fromkeys(r["preset"] for r in rows):
        curve = [r for r in rows if r["preset"] == preset]
        name = curve[0]["combination"]
        steps = max(int(i) for i in re.findall(r"g(\d+)", name))
        style = "--" if "/" in name else ("-" if "+" in name or name == "g1" else ":")
        x, y = [r["meta_iteration"] for r in curve], [100 * r["test_acc"] for r in curve]
        ax.plot(x, y, style, color=f"C{steps - 1}", label=name, linewidth=1.8)
    ci = sum(100 * r["test_acc_ci95"] for r in rows) / len(rows)
    ax.set(xlabel="meta-iteration", ylabel="test accuracy (%)")
    ax.set_title(f"Inner-loop gradient combinations, 5-shot 5-way Omniglot\n{episodes} fixed meta-test tasks per "
                 f"point, 95 % interval about ±{ci:.1f} points", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2, loc="upper left")
    return fig


def draw(out: Path, names, stem: Path, episodes: int) -> list[dict]:
    """Write `<stem>.csv` and `<stem>.png` from the runs' logs and log the figure to `<out>/tensorboard`."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    rows = read_curves(out, names)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    image = render(figure(rows, episodes))  # (H, W, 3) uint8: the same pixels in the PNG and in TensorBoard
    Image.fromarray(image).save(stem.with_suffix(".png"))
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_image("study/gradient_combinations", image, max(r["meta_iteration"] for r in rows),
                         dataformats="HWC")  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, required=True, help="meta-iterations per run (the paper: 40000)")
    parser.add_argument("--eval-every", type=int, default=None, help="meta-iterations between evaluations "
                        "(default: steps / 20)")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=100, help="fixed meta-test episodes per evaluation")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma list of gradcomb_<name> presets")
    parser.add_argument("--out", type=Path, default=Path("outputs/gradient_combinations"), help="run folders")
    parser.add_argument("--figure", type=Path, default=Path("docs/gradient_combinations"),
                        help="writes <figure>.png and <figure>.csv")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="key=value for every run, e.g. algorithm.eval_inner.steps=3")
    args = parser.parse_args(argv)
    names = [n for n in args.presets.split(",") if n]
    unknown = sorted(set(names) - set(PRESETS))
    if unknown:
        parser.error(f"no preset gradcomb_{unknown[0]}; choose from {', '.join(PRESETS)}")
    every = args.eval_every or max(args.steps // 20, 1)
    run(names, args.steps, every, args.episodes, args.out, args.overrides)
    rows = draw(args.out, names, args.figure, args.episodes)
    for name in names:
        last = [r for r in rows if r["preset"] == name][-1]
        print(f"[study] {last['combination']:>18}: {100 * last['test_acc']:.1f} ± {100 * last['test_acc_ci95']:.1f} %")
    print(f"[study] wrote {args.figure.with_suffix('.png')} and {args.figure.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
