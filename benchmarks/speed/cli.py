"""`python -m benchmarks.speed`: the command line, and the loop over queries settings and presets."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

import benchmarks.speed
from benchmarks.speed.measure import measure
from benchmarks.speed.peers import PEERS, peer_available
from benchmarks.speed.presets import ALGORITHMS
from benchmarks.speed.report import ROW_TITLES, tables

ROWS = tuple(ROW_TITLES)


def preset_name(name: str) -> str:
    return name if "_" in name else f"{name}_omniglot_5w1s"


def _parser() -> argparse.ArgumentParser:
    description = benchmarks.speed.__doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=description)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated; or preset names")
    parser.add_argument("--repeats", type=int, default=None, help="timed meta-iterations per row (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed meta-iterations first (default 2)")
    parser.add_argument("--queries", default=None, help="query images per class, comma-separated (default 1,15)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (2 tasks, Conv4-8)")
    parser.add_argument("--rows", default=",".join(ROWS), help="subset of " + ",".join(ROWS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every row (default: torch's)")
    parser.add_argument("--root", default="data", help="data.root holding omniglot/ (archives or decoded cache)")
    parser.add_argument("--floor-chunk", type=int, default=None, help="tasks per (d) batch (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: every row, (a) with trainer.accelerator=gpu")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra train.py override for every row's preset (e.g. data.num_workers=4)",
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the profiled iteration")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.queries = [int(q) for q in (args.queries or ("1" if args.quick else "1,15")).split(",")]
    args.threads = args.threads or torch.get_num_threads()
    args.root = str(Path(args.root).resolve())
    args.presets = [preset_name(a.strip()) for a in args.algorithms.split(",") if a.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure every (queries, preset) cell, print the tables, and write them to `--json` if given."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.peers = {p: p in args.rows and peer_available(p) for p in PEERS}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__} on {where}, {args.threads} threads, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; repeats {args.repeats}, "
          f"warm-up {args.warmup}{', quick sizes' if args.quick else ''}; peers: "
          f"{', '.join(p for p, ok in args.peers.items() if ok) or 'none'}")  # fmt: skip
    results: dict[int, dict[str, dict]] = {}
    for queries in args.queries:
        results[queries] = {}
        for preset in args.presets:
            results[queries][preset] = measure(preset, queries, args, args.rows)
    print(tables(results, args.rows))
    if args.json:
        Path(args.json).write_text(json.dumps({str(q): c for q, c in results.items()}, indent=1) + "\n")
    return results
