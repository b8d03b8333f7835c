"""Peak memory of one meta-iteration against inner steps (MAML vs iMAML), and each algorithm's speed.

Usage: python benchmarks/memory.py [--steps 5 10 20 50] [--batching loop] [--meta-batch 2] [--iters 2]

Memory: each (algorithm, inner steps) runs in a fresh subprocess on the 5-way 1-shot preset's shapes (random
images: memory does not depend on pixel values), and reports the growth of the peak resident set size
(`getrusage(RUSAGE_SELF).ru_maxrss`) over one meta-iteration, above the process's peak just before it (after
a one-task, zero-step warm-up that loads kernels and thread pools).
MAML keeps every inner step's graph for its backward pass; iMAML keeps none of the inner trajectory.
With `--batching loop` (the default) one task's graph is alive at a time, so the meta-batch size does not
change the peak; `vmap` holds the whole meta-batch's graphs at once.

Speed: meta-iterations/s of each algorithm's Omniglot 5-way 1-shot preset on real episodes (`--root`), timing
`map_tasks(meta_gradient)` plus the mean over tasks as benchmarks/batching.py does (no Trainer).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import Episode, EpisodeBatches

REPO = Path(__file__).resolve().parent.parent
SPEED_PRESETS = ("reptile_omniglot_5w1s", "fomaml_omniglot_5w1s", "maml_omniglot_5w1s", "imaml_omniglot_5w1s")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def meta_iteration(learner, batch: Episode) -> dict[str, torch.Tensor]:
    """The mean meta-gradient of a meta-batch: a training step without the optimizer step."""
    grads, _ = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    return {k: g.mean(0) for k, g in grads.items()}


def child(algorithm: str, steps: int, batching: str, meta_batch: int) -> None:
    """One meta-iteration in this (fresh) process; prints the peak RSS before and after as JSON."""
    overrides = [f"algorithm.inner.steps={steps}", f"algorithm.batching={batching}"]
    cfg = load_config([f"experiment={algorithm}_omniglot_5w1s", *overrides])
    learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task="classification")
    cfg.algorithm.inner.steps = 0  # a warm-up learner: one task, no inner step (loads kernels, thread pools)
    warm = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task="classification")
    ways, shots, queries, size = cfg.data.ways, cfg.data.shots, cfg.data.queries, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    batch = Episode(  # (T, N*K, 1, H, W) support and (T, N*Q, 1, H, W) query images, labels 0..N-1
        torch.rand(meta_batch, ways * shots, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(shots).expand(meta_batch, -1),
        torch.rand(meta_batch, ways * queries, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(queries).expand(meta_batch, -1),
    )
    meta_iteration(warm, Episode(*(field[:1] for field in batch)))
    before = peak_mb()
    start = time.perf_counter()
    meta_iteration(learner, batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"before": before, "after": peak_mb(), "seconds": seconds}))


def memory_table(steps: list[int], batching: str, meta_batch: int) -> None:
    print(f"\nPeak-memory growth of one meta-iteration (MB), 5-way 1-shot Conv4-64, {meta_batch} tasks, {batching}")
    print(f"{'inner steps':>12} {'MAML':>10} {'iMAML':>10}   (seconds: MAML / iMAML)")
    for k in steps:
        row = {}
        for algorithm in ("maml", "imaml"):
            argv = [sys.executable, __file__, "--child", algorithm, str(k), "--batching", batching,
                    "--meta-batch", str(meta_batch)]  # fmt: skip
            out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout
            row[algorithm] = json.loads(out.strip().splitlines()[-1])
        growth = {a: r["after"] - r["before"] for a, r in row.items()}
        print(f"{k:>12} {growth['maml']:>10.0f} {growth['imaml']:>10.0f}   "
              f"({row['maml']['seconds']:.1f} s / {row['imaml']['seconds']:.1f} s)")  # fmt: skip


def speed_table(root: str, iters: int) -> None:
    threads = torch.get_num_threads()
    print(f"\nMeta-iterations/s on real Omniglot 5-way 1-shot episodes (preset settings), {threads} threads")
    for name in SPEED_PRESETS:
        cfg = load_config([f"experiment={name}", f"data.root={root}"])
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task=datamodule.task)
        shots = (datamodule.train_shots, datamodule.train_queries)
        size = datamodule.meta_batch_size
        batch = EpisodeBatches(datamodule.sources["train"], 0, "train", shots, range(size), size)[0]
        meta_iteration(learner, batch)  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            meta_iteration(learner, batch)
        seconds = (time.perf_counter() - start) / iters
        print(f"{name:<24} meta-batch {size:>2} x {shots[0]}+{shots[1]} per class, {cfg.algorithm.inner.steps:>2} "
              f"inner steps, {learner.batching}: {1 / seconds:6.2f} it/s ({seconds * 1e3:7.0f} ms)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[5, 10, 20, 50], help="inner steps to measure")
    parser.add_argument("--batching", default="loop", choices=["loop", "vmap"])
    parser.add_argument("--meta-batch", type=int, default=2, help="tasks per meta-iteration in the memory table")
    parser.add_argument("--iters", type=int, default=2, help="timed meta-iterations per algorithm")
    parser.add_argument("--root", default="data", help="data.root holding omniglot/ (archives or cache)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("ALGORITHM", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.batching, args.meta_batch)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    memory_table(args.steps, args.batching, args.meta_batch)
    if not args.skip_speed:
        speed_table(args.root, args.iters)


if __name__ == "__main__":
    main()
