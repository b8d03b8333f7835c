"""Timing and memory of every row: the in-process rows on pre-sampled meta-batches, (a) as a child process running
`lightning_meta.run.train` (what `python train.py` runs) with a step clock, and the episode sampling.

`python -m benchmarks.speed.measure SPEC` is that child (SPEC: the JSON `time_train` writes)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from benchmarks.speed.peers import PEERS, higher_step, learn2learn_step
from benchmarks.speed.presets import Setting, describe, preset_settings
from benchmarks.speed.reference import Step, floor_step, func_step, plain_step
from benchmarks.speed.report import ROW_TITLES
from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import Episode, EpisodeBatches
from lightning_meta.errors import DataError

REPO = Path(__file__).resolve().parents[2]
QUICK = ["data.meta_batch_size=2", "model.hidden=8"]  # --quick: tiny sizes (no algorithm keys)
ROW_FACTORIES = {"b": plain_step, "c": func_step, "higher": higher_step, "learn2learn": learn2learn_step}


@dataclass(frozen=True)
class Timing:
    """How every row is timed: median over `repeats` iterations after `warmup` ones with `threads` torch threads,
    plus one profiled iteration when `memory`, on `device`."""

    warmup: int
    repeats: int
    threads: int
    memory: bool
    device: str = "cpu"

    @classmethod
    def of(cls, args: argparse.Namespace) -> Timing:
        return cls(args.warmup, args.repeats, args.threads, args.memory, args.device)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a clock read without this times the launch)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class TensorPeak:
    """Peak tensor memory allocated between `start()` and `stop()`, above the level at `start()`, in MB. CPU: from
    the allocation events of `torch.profiler(profile_memory=True)` (each carries the running total); CUDA: the
    caching allocator's peak statistic (`torch.cuda.max_memory_allocated`)."""

    def __init__(self, device: str = "cpu") -> None:
        self.mb: float | None = None
        self._prof = None
        self.device = device
        self._base = 0

    def start(self) -> None:
        if self.device.startswith("cuda"):
            sync(self.device)
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return
        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()

    def stop(self) -> float | None:
        if self.device.startswith("cuda"):
            sync(self.device)
            self.mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return self.mb
        self._prof.__exit__(None, None, None)
        try:
            self.mb = allocation_peak_mb(self._prof)
        except Exception as error:  # private profiler API; a missing reading must not stop the benchmark
            print(f"  memory reading failed ({type(error).__name__}: {error})", file=sys.stderr)
        self._prof = None
        return self.mb

    def __enter__(self) -> TensorPeak:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def allocation_peak_mb(prof) -> float:
    from torch._C._profiler import _EventType

    allocations, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            fields = event.typed[1]
            allocations.append((event.start_time_ns, fields.alloc_size, fields.total_allocated))
        stack.extend(event.children)
    if not allocations:
        return 0.0
    allocations.sort()
    # The allocator's running total also counts blocks from earlier profiles freed while profiling was off, so
    # measure from the level just before the window's first allocation.
    base = allocations[0][2] - allocations[0][1]
    return max(total for _, _, total in allocations) / 2**20 - base / 2**20


def time_row(step: Step, batches: list[Episode], timing: Timing) -> dict:
    """An in-process row: one `step` per meta-batch, the first `timing.warmup` untimed; then one profiled step."""
    seconds = []
    for i, batch in enumerate(batches):
        sync(timing.device)
        start = time.perf_counter()
        step(batch)
        sync(timing.device)
        if i >= timing.warmup:
            seconds.append(time.perf_counter() - start)
    out = {"ms": statistics.median(seconds) * 1e3, "all_ms": [t * 1e3 for t in seconds]}
    if timing.memory:
        with TensorPeak(timing.device) as peak:
            step(batches[0])
        out["mb"] = peak.mb
    return out


# (a): the child process --------------------------------------------------------------------------------------
def train_child(spec: dict) -> None:
    """Run `lightning_meta.run.train` (what `python train.py` runs) with a step clock; write the times as JSON."""
    import pytorch_lightning as pl

    from lightning_meta.run import train

    torch.set_num_threads(spec["threads"])
    profile_step = spec["steps"] - 1 if spec["memory"] else -1
    device = spec.get("device", "cpu")

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.peak = TensorPeak(device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == profile_step:
                self.peak.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(device)
            if batch_idx == profile_step:
                self.peak.stop()
            else:
                self.ends.append(time.perf_counter())

    clock = StepClock()
    start = time.perf_counter()
    train(load_config(spec["argv"]), extra_callbacks=[clock])
    wall = time.perf_counter() - start
    intervals = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)][spec["warmup"] :]
    Path(spec["out"]).write_text(json.dumps({"intervals": intervals, "mb": clock.peak.mb, "wall": wall}))


def time_train(preset: str, overrides: list[str], timing: Timing) -> dict:
    """(a): the train.py loop in a child process, `warmup + repeats + 1` timed steps plus one profiled step."""
    steps = timing.warmup + timing.repeats + 1 + (1 if timing.memory else 0)
    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        argv = [
            f"experiment={preset}", *overrides, "data.val_episodes=0", "trainer.limit_test_batches=0",
            f"trainer.max_steps={steps}", f"output_dir={Path(tmp) / 'run'}",
        ]  # fmt: skip
        spec = dict(argv=argv, steps=steps, out=str(Path(tmp) / "t.json"), **asdict(timing))
        env = {**os.environ, "OMP_NUM_THREADS": str(timing.threads)}
        log = Path(tmp) / "log.txt"
        with open(log, "w") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.speed.measure", json.dumps(spec)], cwd=REPO, env=env, stdout=fh,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        if proc.returncode != 0:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"train.py child failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(Path(spec["out"]).read_text())
    ms = [t * 1e3 for t in result["intervals"]]
    return {"ms": statistics.median(ms), "mean_ms": statistics.fmean(ms), "all_ms": ms, "mb": result["mb"],
            "wall_s": result["wall"], "argv": argv}  # fmt: skip


# ----------------------------------------------------------------------------------------------- one table cell
def cell_overrides(queries: int, args: argparse.Namespace) -> list[str]:
    """The train.py overrides of one (preset, queries) cell, on top of `experiment=<preset>`."""
    overrides = [f"data.root={args.root}", f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}"]
    if queries != 1:
        overrides += [f"data.queries={queries}", f"data.train_queries={queries}"]
    if args.quick:
        overrides += QUICK
    return overrides + args.set


def sample(datamodule, count: int, device: str) -> tuple[list[Episode], dict]:
    """The first `count` meta-batches train.py trains on, drawn as its loader draws them and moved to `device`, and
    the draw's median time."""
    size = datamodule.meta_batch_size
    shots = (datamodule.train_shots, datamodule.train_queries)
    stream = EpisodeBatches(datamodule.sources["train"], datamodule.seed, "train", shots, range(count * size), size)
    batches, seconds = [], []
    for i in range(count):
        start = time.perf_counter()
        batches.append(stream[i])
        seconds.append(time.perf_counter() - start)
    ms = statistics.median(seconds) * 1e3
    sampling = {"ms_per_meta_batch": ms, "episodes_per_s": size / (ms / 1e3)}
    return [Episode(*(f.to(device) for f in b)) for b in batches], sampling


def time_in_process(row: str, s: Setting, model: nn.Module, batches: list[Episode], args: argparse.Namespace):
    """Row b, c, d or a peer on `batches` (a dict as `time_row`'s); None where it does not run (a peer that does
    not import, or that has no implementation of this algorithm)."""
    if row in PEERS and not args.peers[row]:
        return None
    try:
        step = floor_step(s, model, args.floor_chunk) if row == "d" else ROW_FACTORIES[row](s, model)
    except NotImplementedError:
        return None
    return time_row(step, batches, Timing.of(args))


def measure(preset: str, queries: int, args: argparse.Namespace, rows: list[str]) -> dict:
    """Every row of one (preset, queries) cell: {"rows": {row: {...}}, "sampling": {...}, "setting": ...}."""
    overrides = cell_overrides(queries, args)
    cfg = load_config([f"experiment={preset}", *overrides])
    s = preset_settings(cfg)
    datamodule = instantiate(cfg.data)
    try:
        datamodule.setup("fit")
    except DataError as error:  # Reptile's 10 training shots + 15 queries > 20 drawings per character
        if "shots+queries" not in str(error):
            raise
        return {"skip": str(error).split(";")[0], "setting": asdict(s)}
    batches, sampling = sample(datamodule, args.warmup + args.repeats, args.device)
    size = datamodule.meta_batch_size
    out = {"setting": asdict(s), "describe": describe(s, cfg, size), "rows": {}, "sampling": sampling}
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model).to(args.device)
    init = copy.deepcopy(model.state_dict())
    for row in rows:
        model.load_state_dict(init)
        run = (partial(time_train, preset, overrides, Timing.of(args)) if row == "a"
               else partial(time_in_process, row, s, model, batches, args))  # fmt: skip
        result = _logged(f"{preset} q={queries} {ROW_TITLES[row]}", run)
        if result is not None:
            out["rows"][row] = result
    a = out["rows"].get("a", {})
    if "ms" in a:
        sampling["consumed_episodes_per_s"] = size / (a["ms"] / 1e3)
        sampling["headroom"] = sampling["episodes_per_s"] / sampling["consumed_episodes_per_s"]
    return out


def _logged(label: str, run: Callable[[], dict | None]) -> dict | None:
    """`run()`'s result, its time printed to stderr; {"error": ...} (printed too) where it raised."""
    try:
        result = run()
    except Exception as error:
        print(f"  {label}: failed: {error}", file=sys.stderr)
        return {"error": str(error)}
    if result is not None:
        mem = f", {result['mb']:.1f} MB" if result.get("mb") is not None else ""
        print(f"  {label}: {result['ms']:.1f} ms{mem}", file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":  # the child process of `time_train`
    train_child(json.loads(sys.argv[1]))
