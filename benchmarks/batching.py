"""Time (and optionally memory) of the batching paths for each shipped algorithm on a fixed Omniglot meta-batch.

Usage: python benchmarks/batching.py [algorithm ...] [--paths auto vmap loop vmap:8 ...] [--repeats N] [--eval]
                                     [--set data.queries=15 ...] [--memory]

A path is `vmap`, `loop`, `auto`, or `vmap:<chunk_size>`. All paths run on the same learner and meta-batch in one
process, interleaved (path 1, path 2, ..., path 1, path 2, ...), so that load from other processes hits them alike;
each line gives the median milliseconds per meta-iteration (`task_gradients`, or one evaluation batch with
`--eval`) and the ratio to the first path. `auto` also prints the path it resolved to. `--memory` adds the growth
of the peak RSS over one meta-iteration of each path, each in a fresh subprocess (as benchmarks/memory.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from lightning_meta.algorithms.batching import resolve
from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import Episode, EpisodeBatches


def setup(argv: list[str], evaluate: bool):
    cfg = load_config(argv)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    torch.manual_seed(cfg.seed)
    learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task=datamodule.task)
    if evaluate:
        batch = datamodule.eval_batches("val", datamodule.eval_batch_size)[0]
    else:
        shots = (datamodule.train_shots, datamodule.train_queries)
        size = datamodule.meta_batch_size
        batch = EpisodeBatches(datamodule.sources["train"], cfg.seed, "train", shots, range(size), size)[0]
    return learner, batch


def run_path(learner, batch: Episode, path: str, evaluate: bool):
    batching, _, chunk = path.partition(":")
    learner.batching, learner.chunk_size = batching, int(chunk) if chunk else None
    with torch.enable_grad():
        if evaluate:
            return learner.map_tasks(learner.evaluate_task, learner.params(), batch)
        return learner.task_gradients(learner.params(), batch)


def memory_child(argv: list[str], path: str, evaluate: bool) -> None:
    learner, batch = setup(argv, evaluate)
    run_path(learner, Episode(*(f[:1] for f in batch)), path, evaluate)  # warm-up: kernels, thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_path(learner, batch, path, evaluate)
    print(json.dumps({"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))


def peak_growth_mb(argv: list[str], path: str, evaluate: bool) -> float:
    cmd = [sys.executable, __file__, "--memory-child", json.dumps([argv, path, evaluate])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["mb"]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--memory-child":
        memory_child(*json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", default=["fomaml"], help="algorithm names or experiment=<name>")
    parser.add_argument("--paths", nargs="+", default=["auto", "vmap", "loop"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval", action="store_true", help="time one evaluation batch instead of a meta-iteration")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. data.queries=15")
    parser.add_argument("--memory", action="store_true", help="also the peak-RSS growth of each path")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.experiments:
        preset = name if "=" in name else f"experiment={name}_omniglot_5w1s"
        argv = [preset, *args.set]
        learner, batch = setup(argv, args.eval)
        times: dict[str, list[float]] = {p: [] for p in args.paths}
        for path in args.paths:
            run_path(learner, batch, path, args.eval)  # warm-up
        for _ in range(args.repeats):
            for path in args.paths:
                start = time.perf_counter()
                run_path(learner, batch, path, args.eval)
                times[path].append(time.perf_counter() - start)
        what = "eval batch" if args.eval else "meta-iteration"
        first = statistics.median(times[args.paths[0]])
        print(f"{' '.join(argv)}: per-task batch {tuple(batch.support_x.shape[:2])} support, "
              f"{tuple(batch.query_x.shape[:2])} query")  # fmt: skip
        for path in args.paths:
            ms = statistics.median(times[path]) * 1e3
            label = f"{path} (-> {resolve(path, batch)})" if path == "auto" else path
            memory = f"   peak +{peak_growth_mb(argv, path, args.eval):7.1f} MB" if args.memory else ""
            print(f"  {label:<18} {ms:9.1f} ms/{what}   x{ms / 1e3 / first:.2f} of {args.paths[0]}{memory}")


if __name__ == "__main__":
    main()
