"""iMAML's inner problem solved by Hessian-free Newton-CG vs gradient descent at an equal budget, on real Omniglot.

Usage: python benchmarks/imaml_hf.py [--tasks 16] [--iters 2] [--root data] [--set key=value ...]

The network is the Omniglot Conv4-64 at its (seeded) initialisation; the tasks are training episodes of the
`imaml_omniglot_5w1s` preset (5-way 1-shot, 1 query per class). For each task it prints nothing; it reports the
mean and spread over tasks of the inner objective G(phi) = L_support(phi) + lam/2 ||phi - theta||^2 that each
solver reaches, from G(theta) at the start.

Budget: one gradient = one Hessian-vector product = 1 unit (forward-over-reverse HVPs cost about two gradients in
wall time; the measured times below include that). A GD step costs 1 unit; a Newton step 1 + hf_cg_steps units,
plus one forward pass per line-search step size (not counted in units; included in the times). GD runs as many
steps as the HF solve has units.

Speed: seconds per meta-iteration (`map_tasks(meta_gradient)` over one meta-batch of `data.meta_batch_size`
tasks, as benchmarks/batching.py) of the iMAML-GD preset and of iMAML-HF, the preset with `--hf` settings.
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


def reached(learner, batch, loop) -> torch.Tensor:
    """G(phi) per task after `loop` (vmapped over the tasks)."""
    theta = learner.params()

    def objective(params, episode):
        phi = learner.inner_loop(params, episode.support_x, episode.support_y, loop)
        return learner.inner_objective(phi, params, episode.support_x, episode.support_y, loop).detach()

    return learner.map_tasks(objective, theta, batch)


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
    parser.add_argument("--iters", type=int, default=2, help="timed meta-iterations per solver")
    parser.add_argument("--root", default="data", help="data.root holding omniglot/ (archives or cache)")
    parser.add_argument("--hf", nargs="*", default=["steps=3", "hf_cg_steps=5"], help="HF inner-loop settings")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. algorithm.batching=loop")
    args = parser.parse_args()
    base = ["experiment=imaml_omniglot_5w1s", f"data.root={args.root}", *args.set]
    learner, batch = learner_and_batch(base, args.tasks)
    settings = dict(s.split("=") for s in args.hf)
    hf = learner.inner.replace(solver="hf", **{k: type(getattr(learner.inner, k))(v) for k, v in settings.items()})
    units = hf.steps * (1 + hf.hf_cg_steps)
    gd = learner.inner.replace(steps=units)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.tasks} training tasks of {base[0]}, "
          f"Conv4 at initialisation, lam {hf.lam}; inner objective G, mean ± sd over tasks")
    start = reached(learner, batch, learner.inner.replace(steps=0))
    print(f"{'start, G(theta)':<58}{start.mean():.4f} ± {start.std():.4f}")
    rows = [(f"GD {gd.steps} steps at lr {gd.lr}", gd, gd.steps),
            (f"HF {hf.steps} Newton steps x {hf.hf_cg_steps} CG, t in {hf.hf_step_sizes}", hf, units)]  # fmt: skip
    for name, loop, cost in rows:
        t0 = time.perf_counter()
        value = reached(learner, batch, loop)
        ms = (time.perf_counter() - t0) / args.tasks * 1e3
        print(f"{name:<58}{value.mean():.4f} ± {value.std():.4f}   {cost} units, {ms:.0f} ms/task")
    for name, loop in (("iMAML-GD (preset inner loop)", learner.inner), ("iMAML-HF", hf)):
        learner.inner = loop
        seconds = seconds_per_meta_iteration(learner, batch, args.iters)
        print(f"{name:<30} {seconds:.2f} s/meta-iteration ({args.tasks} tasks, batching={learner.batching})")


if __name__ == "__main__":
    main()
