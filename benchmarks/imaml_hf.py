"""iMAML's inner problem solved by Hessian-free Newton-CG vs gradient descent at an equal budget, on real Omniglot.

Usage: python benchmarks/imaml_hf.py [--tasks 16] [--newton-steps 3 6] [--gd-lrs 0.1 0.03] [--iters 2] [--root data]

The network is the Omniglot Conv4-64 at its seeded initialisation; the tasks are training episodes of the
`imaml_hf_omniglot_5w1s` preset (5-way 1-shot, 1 query per class), whose inner loop (lambda 2, Newton steps of 5 CG
steps and a line search) is the HF solver. Reported: the inner objective G(phi) = L_support(phi) + lam/2
||phi - theta||^2 each solver reaches, mean ± sd over the tasks, from G(theta).

Budget: one gradient = one Hessian-vector product = 1 unit. A GD step costs 1 unit; a Newton step 1 + hf_cg_steps
units, plus one forward pass per line-search step size (not counted). GD runs as many steps as the HF solve has
units. Wall time is reported too: a forward-over-reverse Hessian-vector product costs more than a gradient.

Speed: seconds per meta-iteration (`map_tasks(meta_gradient)` over the `--tasks` tasks, as benchmarks/batching.py)
of the iMAML-GD preset's inner loop (16 SGD steps) and of the iMAML-HF preset's.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import EpisodeBatches


def learner_and_batch(argv: list[str], tasks: int, seed: int = 0):
    """An iMAML learner at a seeded initialisation and a batch of `tasks` training episodes."""
    cfg = load_config(argv)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    torch.manual_seed(seed)
    learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task=datamodule.task)
    shots = (datamodule.train_shots, datamodule.train_queries)
    batch = EpisodeBatches(datamodule.sources["train"], seed, "train", shots, range(tasks), tasks)[0]
    return learner, batch


def reached(learner, batch, loop) -> tuple[torch.Tensor, float]:
    """G(phi) per task after `loop` (over the tasks as `algorithm.batching` says), and the seconds it took."""

    def objective(theta, episode):
        phi = learner.inner_loop(theta, episode.support_x, episode.support_y, loop)
        return learner.inner_objective(phi, theta, episode.support_x, episode.support_y, loop).detach()

    start = time.perf_counter()
    values = learner.map_tasks(objective, learner.params(), batch)
    return values, time.perf_counter() - start


def seconds_per_meta_iteration(learner, batch, iters: int) -> float:
    fn = lambda: learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16, help="tasks the inner objectives are averaged over")
    parser.add_argument("--newton-steps", type=int, nargs="+", default=[3, 6], help="HF budgets (preset: 3)")
    parser.add_argument("--gd-lrs", type=float, nargs="+", default=[0.1, 0.03], help="GD step sizes (preset: 0.1)")
    parser.add_argument("--iters", type=int, default=2, help="timed meta-iterations per solver (0: no timing)")
    parser.add_argument("--root", default="data", help="data.root holding omniglot/ (archives or cache)")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. algorithm.batching=loop")
    args = parser.parse_args()
    argv = ["experiment=imaml_hf_omniglot_5w1s", f"data.root={args.root}", *args.set]
    learner, batch = learner_and_batch(argv, args.tasks)
    preset_hf = learner.inner
    gd_preset = preset_hf.replace(solver="gd", steps=16)  # imaml_omniglot_5w1s's inner loop
    size = sum(p.numel() for p in learner.backbone.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.tasks} training tasks of {argv[0]}, "
          f"Conv4 ({size} weights) at initialisation, lam {preset_hf.lam}; G mean ± sd over the tasks")  # fmt: skip
    print(f"{'G(theta)':<44}{reached(learner, batch, preset_hf.replace(steps=0))[0].mean():.4f}")
    for newton_steps in args.newton_steps:
        hf = preset_hf.replace(steps=newton_steps)
        units = hf.steps * (1 + hf.hf_cg_steps)
        rows = [(f"GD {units} steps at lr {lr}", gd_preset.replace(steps=units, lr=lr)) for lr in args.gd_lrs]
        rows.append((f"HF {hf.steps} Newton steps x {hf.hf_cg_steps} CG steps", hf))
        for name, loop in rows:
            values, seconds = reached(learner, batch, loop)
            print(f"{units:>3} units  {name:<34}{values.mean():.4f} ± {values.std():.4f}   "
                  f"{seconds / args.tasks * 1e3:5.0f} ms/task")  # fmt: skip
    if args.iters:
        for name, loop in (("iMAML-GD preset (16 SGD steps)", gd_preset), ("iMAML-HF preset", preset_hf)):
            learner.inner = loop
            seconds = seconds_per_meta_iteration(learner, batch, args.iters)
            print(f"{name:<44}{seconds:.2f} s/meta-iteration ({args.tasks} tasks, batching={learner.batching})")


if __name__ == "__main__":
    main()
