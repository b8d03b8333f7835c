"""Meta-iterations/s of the vmap and loop paths for each shipped algorithm on a fixed Omniglot meta-batch.

Usage: python benchmarks/batching.py [algorithm ...] [--iters N] [--eval]
Prints one line per (algorithm, path): seconds per meta-iteration (or evaluation batch) and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import EpisodeBatches


def time_path(argv: list[str], batching: str, iters: int, evaluate: bool) -> float:
    cfg = load_config([*argv, f"algorithm.batching={batching}"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task=datamodule.task)
    if evaluate:
        batch = datamodule.eval_batches("val", datamodule.eval_batch_size)[0]
        fn = lambda: learner.map_tasks(learner.evaluate_task, learner.params(), batch)
    else:
        shots = (datamodule.train_shots, datamodule.train_queries)
        ids = range(0, datamodule.meta_batch_size)
        batch = EpisodeBatches(datamodule.sources["train"], 0, "train", shots, ids, datamodule.meta_batch_size)[0]
        fn = lambda: learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", default=["reptile"], help="algorithm names or experiment=<name>")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--eval", action="store_true", help="time one evaluation batch instead of a meta-iteration")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. data.ways=20")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.experiments:
        argv = [name if "=" in name else f"algorithm={name}", *args.set]
        times = {b: time_path(argv, b, args.iters, args.eval) for b in ("vmap", "loop")}
        what = "eval batch" if args.eval else "meta-iteration"
        print(
            f"{' '.join(argv):<40} vmap {times['vmap'] * 1e3:8.1f} ms/{what}   loop {times['loop'] * 1e3:8.1f} ms   "
            f"loop/vmap {times['loop'] / times['vmap']:.2f}"
        )


if __name__ == "__main__":
    main()
