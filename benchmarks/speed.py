"""Milliseconds per meta-iteration of lightning_meta's whole training loop against reference implementations.

Usage: python benchmarks/speed.py [--algorithms reptile,fomaml,maml,imaml] [--repeats N] [--queries 1,15] [--quick]
       [--warmup N] [--threads N] [--root data] [--rows a,b,c,d,higher,learn2learn] [--floor-chunk N]
       [--device cpu|cuda] [--set KEY=VALUE] [--no-memory] [--json PATH]

Each algorithm runs at its paper preset (`configs/experiment/<algorithm>_omniglot_5w1s.yaml`: Omniglot 5-way 1-shot,
Conv4-64), on the same tasks in every row: meta-batches 0, 1, 2, ... of the preset's training stream (seed 0), the
ones `python train.py` trains on first. Rows:

(a) lightning_meta: the whole `train.py` loop (`lightning_meta.run.train`, the function behind `python train.py`,
    in a child process) with only `experiment=`, `data.*` and `trainer.*` overrides: no validation
    (`data.val_episodes=0`), no meta-test (`trainer.limit_test_batches=0`), logging and progress bar as train.py
    has them. A callback records the time of every `on_train_batch_end`; one interval is one whole loop iteration
    (episode sampling, the training step, the outer update, logging, callbacks). The figure is the median interval
    after `--warmup` steps (the mean is kept in `--json`; it also holds the every-50-step TensorBoard write).
(b) plain loop: one task at a time, as reference code is written. MAML/FOMAML: hand-written functional Conv4
    forward, `torch.autograd.grad` inner steps (MAML with `create_graph=True`), `backward` of the query loss.
    Reptile: one fast model loaded with theta per task, stepped by `torch.optim.Adam(betas=(0, 0.999))`: a fresh
    one per task, or with the preset's `inner_state=carried` one Adam whose moments run on from task to task and
    meta-iteration to meta-iteration, as supervised-reptile's (`batched`: every task from the same state, which
    then moves to the tasks' mean). The query set is not scored (lightning_meta scores it for the training log,
    on the steps whose log is written).
    iMAML (aravindr93/imaml_dev style): fast model with `torch.optim.SGD` on the proximal objective, then per-task
    conjugate gradient on flat vectors whose Hessian-vector products recompute the support loss and take a double
    backward each call. Same meta-gradient as lightning_meta's ((I + H/lam) v = g_query for iMAML).
(c) minimal torch.func: `functional_call` + `grad` per task, `vmap` over the meta-batch, no framework (a carried
    Reptile state runs the tasks in order instead: it is sequential by definition).
(d) compute floor proxy: the same images through the same primitives as one shared-weight batch: per inner step
    one forward+backward of the meta-batch's support (mini-)batches stacked (T x images per step), plus one of all
    query images (not Reptile, whose queries only feed a log) and, for iMAML, one more support pass per CG step.
    First-order passes only: no second-order terms, no per-task weights. One huge batch is not always the fastest
    way through a CPU's caches (at 15 queries per class the query batch is T x 75 images): `--floor-chunk C` runs
    it C tasks at a time.
higher / learn2learn: optional peer rows (FOMAML and MAML), each library's documented MAML loop
    (`higher.innerloop_ctx`; `learn2learn.algorithms.MAML.clone/adapt`), run when the package imports, skipped
    otherwise; neither is a dependency of lightning_meta (`pip install higher --no-deps` works with torch 2.13;
    learn2learn 0.2.0 builds from its sdist with fresh Cython output, but its import needs torchvision, gym, scipy).

(b), (c), (d) and the peers run in this process on meta-batches sampled before timing; each timed iteration includes
the outer optimizer step. Time: median over `--repeats` iterations after `--warmup` ones. Memory: peak tensor memory
allocated during one extra iteration (for (a): one extra training step), above what was live when it started, as
recorded by `torch.profiler(profile_memory=True)` (tensors from torch's CPU allocator; not RSS, not allocator
caches; frees of tensors older than the window are not seen, so a reading can only overstate; torch says so once,
"Memory block of unknown size was allocated before the profiling started"). Episode sampling: meta-batches drawn
as the training loader draws them, episodes/s against what (a) consumes (meta-batch size / (a)'s time per step).

Inner-loop settings come from the composed preset through `preset_settings`, which reads them off the learner the
config builds (a preset's YAML may list only what differs from the class defaults), in either layout: flat
(`inner_lr`, `inner_steps`, ...) or nested (`inner.lr`, `inner.steps`, ...; iMAML's `inner.lam`).

Ratios in the table: (b)/(a) and "fastest of (b)+peers/(a)" above 1 mean lightning_meta is faster; (a)/(c) and
(a)/(d) above 1 mean it is slower than the minimal torch.func loop and the floor proxy.
Final numbers: a quiet machine, the threads a user gets (torch's default), e.g.
    python benchmarks/speed.py --json speed.json
On a GPU, `--device cuda` runs every row there ((a) with `trainer.accelerator=gpu`); each timed iteration ends
with `torch.cuda.synchronize()`, and memory is the CUDA caching allocator's peak above the level at the start.
`--set KEY=VALUE` adds a train.py override to every row's preset (e.g. `--set data.num_workers=4` for (a));
`--rows ""` measures episode sampling alone.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.utils._pytree import tree_map

from lightning_meta.config import instantiate, load_config
from lightning_meta.data.episode import Episode, EpisodeBatches

REPO = Path(__file__).resolve().parent.parent
ALGORITHMS = ("reptile", "fomaml", "maml", "imaml")
ROWS = ("a", "b", "c", "d", "higher", "learn2learn")
ROW_TITLES = {
    "a": "(a) lightning_meta",
    "b": "(b) plain loop",
    "c": "(c) torch.func/vmap",
    "d": "(d) floor",
    "higher": "higher",
    "learn2learn": "learn2learn",
}
PEERS = ("higher", "learn2learn")
QUICK = ["data.meta_batch_size=2", "model.hidden=8"]  # --quick: tiny sizes (no algorithm keys)

Params = dict[str, Tensor]
Step = Callable[[Episode], None]


# ----------------------------------------------------------------------------------------------- preset settings
@dataclass(frozen=True)
class Inner:
    steps: int
    lr: float
    batch_size: int | None
    optimizer: str  # "sgd" or "adam" (beta1 = 0)


@dataclass(frozen=True)
class Setting:
    """What (b), (c), (d) and the peers need of a preset's algorithm."""

    algorithm: str  # reptile, fomaml, maml, imaml
    inner: Inner
    lr: float  # outer learning rate
    optimizer: str  # outer optimizer, "adam" or "sgd"
    lam: float = 2.0  # iMAML
    cg_steps: int = 5  # iMAML
    cg_damping: float = 0.0  # iMAML
    inner_state: str = "fresh"  # Reptile's inner Adam state: fresh per task, carried from task to task, or batched


def _get(node, key: str, default=None):
    """node[key] of a DictConfig or dict, node.key of any other object; `default` when absent."""
    if isinstance(node, Mapping):
        return node[key] if key in node else default
    return getattr(node, key, default)


def _optimizer_name(value) -> str:
    if isinstance(value, str):
        return value.lower()
    for key in ("name", "type", "kind"):  # a nested optimizer node, e.g. {name: adam, ...}
        if _get(value, key) is not None:
            return str(_get(value, key)).lower()
    raise ValueError(f"cannot read an optimizer name from {value!r}")


def _nested_inner(node):
    inner = _get(node, "inner")
    return None if inner is None or isinstance(inner, (int, float, str)) else inner


def inner_settings(node) -> Inner:
    """The meta-training inner loop of an algorithm config node or learner, in either layout: nested
    (`inner.steps`, `inner.lr`, `inner.batch_size`, `inner.optimizer`; an `InnerLoop` value on a learner) or flat
    (`inner_steps`, `inner_lr`, `inner_batch_size`, `inner_optimizer`)."""
    nested = _nested_inner(node)
    if nested is not None:
        read = lambda key, default=None: _get(nested, key, default)
    else:
        read = lambda key, default=None: _get(node, f"inner_{key}", default)
    steps, lr, batch = read("steps"), read("lr"), read("batch_size")
    if steps is None or lr is None:
        raise ValueError(f"no inner steps/lr in {node!r}")
    if not isinstance(lr, (int, float)):
        raise ValueError(f"inner.lr={lr!r}: the reference rows take one scalar inner step size")
    return Inner(
        int(steps), float(lr), None if batch is None else int(batch), _optimizer_name(read("optimizer", "sgd"))
    )


def preset_settings(cfg) -> Setting:
    """`Setting` of a composed config (`lightning_meta.config.load_config`). The values are read off the learner
    the config builds, since a preset's YAML may list only what differs from the algorithm class's defaults."""
    learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task="classification")
    algorithm = str(_get(_get(cfg, "selection", {}), "algorithm") or type(learner).__name__).lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"speed.py knows {', '.join(ALGORITHMS)}, not {algorithm}")
    if algorithm != "reptile" and _get(learner, "transductive", True) is False:
        raise ValueError(f"{algorithm} with transductive=false: the reference rows predict queries as one batch")
    nested = _nested_inner(learner)
    if _get(nested, "solver", "gd") != "gd":
        raise ValueError(f"inner.solver={_get(nested, 'solver')}: the reference rows implement solver=gd only")
    lam = _get(nested, "lam") if nested is not None and _get(nested, "lam") is not None else _get(learner, "lam", 2.0)
    outer = _get(learner, "optimizer_name") or _get(cfg.algorithm, "optimizer", "adam")
    return Setting(
        algorithm=algorithm,
        inner=inner_settings(learner),
        lr=float(_get(learner, "lr")),
        optimizer=_optimizer_name(outer),
        lam=float(lam),
        cg_steps=int(_get(learner, "cg_steps", 5)),
        cg_damping=float(_get(learner, "cg_damping", 0.0)),
        inner_state=str(_get(learner, "inner_state", "fresh")) if algorithm == "reptile" else "fresh",
    )


def describe(s: Setting, cfg, batch_size: int) -> str:
    d = cfg.data
    shots = d.train_shots if d.train_shots is not None else d.shots
    queries = d.train_queries if d.train_queries is not None else d.queries
    per_step = s.inner.batch_size or d.ways * shots
    text = f"{batch_size} tasks × {s.inner.steps} {s.inner.optimizer.upper()} steps × {per_step} images"
    if s.inner.optimizer == "adam" and s.algorithm == "reptile":
        text += f", {s.inner_state} state"
    if s.algorithm == "imaml":
        text += f", {s.cg_steps} CG"
    return f"{text}, {queries} q/class"


def batch_indices(step: int, batch_size: int | None, n: int, device=None) -> Tensor | None:
    """Inner mini-batch `step`: consecutive examples, wrapping around the (pre-shuffled) support set."""
    if batch_size is None or batch_size >= n:
        return None
    return torch.arange(step * batch_size, (step + 1) * batch_size, device=device) % n


def _mini(x: Tensor, y: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor]:
    return (x, y) if idx is None else (x[idx], y[idx])


def outer_optimizer(s: Setting, model: nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.SGD if s.optimizer == "sgd" else torch.optim.Adam
    return cls(model.parameters(), lr=s.lr)


def _apply(model: nn.Module, opt: torch.optim.Optimizer, meta_grad: Params) -> None:
    for name, p in model.named_parameters():
        p.grad = meta_grad[name].to(p.dtype)
    opt.step()


# ----------------------------------------------------------------------------------------------- (b) plain loop
def conv4_forward(model: nn.Module, weights: list[Tensor], x: Tensor) -> Tensor:
    """Hand-written functional forward of a `Conv4` (weights in `model.parameters()` order), as reference MAML code
    writes it: conv2d, batch norm on the batch's own statistics, relu (, max-pool), flatten, linear."""
    it = iter(weights)
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            x = F.conv2d(x, next(it), next(it), m.stride, m.padding)
        elif isinstance(m, nn.BatchNorm2d):
            x = F.batch_norm(x, None, None, next(it), next(it), training=True, eps=m.eps)
        elif isinstance(m, nn.ReLU):
            x = F.relu(x)
        elif isinstance(m, nn.MaxPool2d):
            x = F.max_pool2d(x, m.kernel_size, m.stride)
        elif isinstance(m, nn.Flatten):
            x = x.flatten(1)
        else:
            raise TypeError(f"the plain loop's Conv4 forward does not know {type(m).__name__}")
    return F.linear(x, next(it), next(it))


def _adam0(w: list[Tensor], g: list[Tensor], v: list[Tensor], t: int, lr: float):
    """One Adam(beta1=0) step on lists (the inner optimizer of MAML/FOMAML when `inner.optimizer=adam`)."""
    v = [0.999 * vi + 0.001 * gi**2 for vi, gi in zip(v, g, strict=True)]
    c = 1 - 0.999**t
    return [wi - lr * gi / ((vi / c).sqrt() + 1e-8) for wi, gi, vi in zip(w, g, v, strict=True)], v


def plain_maml_grad(s: Setting, model: nn.Module, batch: Episode) -> Params:
    """MAML / FOMAML one task at a time: functional forward, autograd.grad steps, query loss backward to theta."""
    second_order = s.algorithm == "maml"
    theta = list(model.parameters())
    for p in theta:
        p.grad = None
    tasks = batch.support_x.shape[0]
    for t in range(tasks):
        xs, ys, xq, yq = (f[t] for f in batch)
        fast, v = theta, [torch.zeros_like(p) for p in theta]
        for step in range(s.inner.steps):
            x, y = _mini(xs, ys, batch_indices(step, s.inner.batch_size, len(ys), ys.device))
            loss = F.cross_entropy(conv4_forward(model, fast, x), y)
            grads = torch.autograd.grad(loss, fast, create_graph=second_order)
            if s.inner.optimizer == "adam":
                fast, v = _adam0(fast, grads, v, step + 1, s.inner.lr)
            else:
                fast = [w - s.inner.lr * g for w, g in zip(fast, grads, strict=True)]
        (F.cross_entropy(conv4_forward(model, fast, xq), yq) / tasks).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _inner_optimizer(s: Setting, params) -> torch.optim.Optimizer:
    if s.inner.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.inner.lr, betas=(0.0, 0.999))
    return torch.optim.SGD(params, lr=s.inner.lr)


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _stateful(s: Setting) -> bool:
    """Whether the inner optimizer's state outlives a task (Reptile's carried or batched Adam state)."""
    return s.algorithm == "reptile" and s.inner.optimizer == "adam" and s.inner_state != "fresh"


def plain_context(s: Setting, model: nn.Module) -> dict:
    """What (b) keeps between meta-iterations: the fast model (loaded with theta per task) and, for a carried or
    batched Reptile state, the one `torch.optim.Adam` whose moments outlive the tasks (as supervised-reptile's)."""
    fast = copy.deepcopy(model)
    return {"fast": fast, "opt": _inner_optimizer(s, fast.parameters()) if _stateful(s) else None}


def plain_torch_optim_grad(s: Setting, model: nn.Module, batch: Episode, ctx: dict) -> Params:
    """Reptile and iMAML one task at a time on a fast model loaded with theta, inner steps by `torch.optim`."""
    fast_model, carried = ctx["fast"], ctx["opt"]
    theta = [p.detach() for p in model.parameters()]
    fast = list(fast_model.parameters())
    meta = [torch.zeros_like(p) for p in theta]
    tasks = batch.support_x.shape[0]
    batched = carried is not None and s.inner_state == "batched"
    start, finals = (copy.deepcopy(carried.state_dict()) if batched else None), []
    for t in range(tasks):
        xs, ys, xq, yq = (f[t] for f in batch)
        with torch.no_grad():
            for w, p in zip(fast, theta, strict=True):
                w.copy_(p)
        if carried is None:
            opt = _inner_optimizer(s, fast)  # a fresh optimizer (state) per task
        else:
            opt = carried  # carried: on from the previous task; batched: every task from the same start
            if batched:  # a copy: load_state_dict keeps the tensors it is given, and Adam updates them in place
                opt.load_state_dict(copy.deepcopy(start))
        for step in range(s.inner.steps):
            x, y = _mini(xs, ys, batch_indices(step, s.inner.batch_size, len(ys), ys.device))
            opt.zero_grad()
            loss = F.cross_entropy(fast_model(x), y)
            if s.algorithm == "imaml":
                loss = loss + 0.5 * s.lam * sum(((w - p) ** 2).sum() for w, p in zip(fast, theta, strict=True))
            loss.backward()
            opt.step()
        if batched:
            finals.append(copy.deepcopy(opt.state_dict()))
        if s.algorithm == "reptile":
            with torch.no_grad():
                for m, p, w in zip(meta, theta, fast, strict=True):
                    m.add_(p - w, alpha=1.0 / tasks)
            continue
        # iMAML: solve (I + H/lam + damping I) v = grad L_query(phi) by CG on flat vectors (imaml_dev's cg_solve).
        b = _flat(torch.autograd.grad(F.cross_entropy(fast_model(xq), yq), fast))

        def matvec(vec: Tensor, xs=xs, ys=ys) -> Tensor:
            g = _flat(torch.autograd.grad(F.cross_entropy(fast_model(xs), ys), fast, create_graph=True))
            hvp = _flat(torch.autograd.grad((g * vec).sum(), fast))
            return vec + hvp / s.lam + s.cg_damping * vec

        x, r, p = torch.zeros_like(b), b.clone(), b.clone()
        rr = r.dot(r)
        for _ in range(s.cg_steps):
            ap = matvec(p)
            alpha = rr / p.dot(ap)
            x, r = x + alpha * p, r - alpha * ap
            rr_next = r.dot(r)
            p, rr = r + (rr_next / rr) * p, rr_next
        offset = 0
        for m in meta:
            m.add_(x[offset : offset + m.numel()].view_as(m), alpha=1.0 / tasks)
            offset += m.numel()
    if batched:  # the state advances once, to the mean of the tasks' final states
        mean = copy.deepcopy(finals[0])
        for i, state in mean["state"].items():
            for key in state:
                state[key] = torch.stack([f["state"][i][key] for f in finals]).mean(0)
        carried.load_state_dict(mean)
    return {name: m for (name, _), m in zip(model.named_parameters(), meta, strict=True)}


def plain_meta_grad(s: Setting, model: nn.Module, batch: Episode, ctx: dict | None = None) -> Params:
    """(b)'s mean meta-gradient of a meta-batch (Reptile: theta - mean phi). `ctx`: `plain_context(s, model)`,
    which carries Reptile's inner state from one call to the next."""
    if s.algorithm in ("maml", "fomaml"):
        return plain_maml_grad(s, model, batch)
    return plain_torch_optim_grad(s, model, batch, ctx or plain_context(s, model))


def plain_step(s: Setting, model: nn.Module) -> Step:
    opt, ctx = outer_optimizer(s, model), plain_context(s, model)
    return lambda batch: _apply(model, opt, plain_meta_grad(s, model, batch, ctx))


# ----------------------------------------------------------------------------------------------- (c) torch.func
def func_task_fn(s: Setting, model: nn.Module) -> Callable:
    """Per-task (theta, xs, ys, xq, yq, state) -> (meta-gradient, final inner state) with torch.func, to `vmap`
    over tasks. `state` is Reptile's carried inner Adam state (t, v), or None for a fresh one; other algorithms
    return the empty state ()."""

    def loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def objective(phi: Params, theta: Params, x: Tensor, y: Tensor) -> Tensor:
        out = loss(phi, x, y)
        if s.algorithm == "imaml":
            out = out + 0.5 * s.lam * sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
        return out

    def inner(theta: Params, xs: Tensor, ys: Tensor, state=None):
        if state is None:  # fresh: zero step count and second moments (SGD has none)
            adam = s.inner.optimizer == "adam"
            state = (
                torch.zeros((), dtype=xs.dtype, device=xs.device),
                {k: torch.zeros_like(w) for k, w in theta.items()} if adam else {},
            )
        phi, (t, v) = theta, state
        for step in range(s.inner.steps):
            x, y = _mini(xs, ys, batch_indices(step, s.inner.batch_size, ys.shape[0], ys.device))
            g = grad(objective)(phi, theta, x, y)
            if s.inner.optimizer == "adam":
                t = t + 1
                v = {k: 0.999 * v[k] + 0.001 * g[k] ** 2 for k in v}
                c = 1 - 0.999**t
                phi = {k: phi[k] - s.inner.lr * g[k] / ((v[k] / c).sqrt() + 1e-8) for k in phi}
            else:
                phi = {k: phi[k] - s.inner.lr * g[k] for k in phi}
        return phi, (t, v)

    def task(theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, state=None):
        if s.algorithm == "maml":
            return grad(lambda th: loss(inner(th, xs, ys)[0], xq, yq))(theta), ()
        phi, final = inner(theta, xs, ys, state)
        phi = {k: w.detach() for k, w in phi.items()}
        if s.algorithm == "reptile":
            return {k: theta[k] - phi[k] for k in theta}, (final if _stateful(s) else ())
        gq = grad(loss)(phi, xq, yq)
        if s.algorithm == "fomaml":
            return gq, ()
        support_grad = grad(lambda p: loss(p, xs, ys))

        def matvec(vec: Params) -> Params:
            hvp = jvp(support_grad, (phi,), (vec,))[1]
            return {k: vec[k] + hvp[k] / s.lam + s.cg_damping * vec[k] for k in vec}

        dot = lambda a, b: sum((a[k] * b[k]).sum() for k in a)
        x, r, p = {k: torch.zeros_like(w) for k, w in gq.items()}, gq, gq
        rr = dot(r, r)
        for _ in range(s.cg_steps):
            ap = matvec(p)
            alpha = rr / dot(p, ap)
            x = {k: x[k] + alpha * p[k] for k in x}
            r = {k: r[k] - alpha * ap[k] for k in r}
            rr_next = dot(r, r)
            p = {k: r[k] + (rr_next / rr) * p[k] for k in r}
            rr = rr_next
        return x, ()

    return task


def func_context(s: Setting, model: nn.Module) -> dict:
    """What (c) keeps between meta-iterations: the per-task function, its vmap, and Reptile's carried state."""
    task = func_task_fn(s, model)
    ctx = {"task": task, "vmapped": vmap(task, in_dims=(None, 0, 0, 0, 0, None)), "state": None}
    if _stateful(s):
        first = next(model.parameters())
        ctx["state"] = (
            torch.zeros((), dtype=first.dtype, device=first.device),
            {k: torch.zeros_like(p) for k, p in model.named_parameters()},
        )
    return ctx


def func_meta_grad(s: Setting, model: nn.Module, batch: Episode, ctx: dict | None = None) -> Params:
    """(c)'s mean meta-gradient of a meta-batch. A carried Reptile state runs the tasks in order (no vmap)."""
    ctx = ctx or func_context(s, model)
    theta = {k: p.detach() for k, p in model.named_parameters()}
    if ctx["state"] is not None and s.inner_state == "carried":
        grads, state = [], ctx["state"]
        for t in range(batch.support_x.shape[0]):
            g, state = ctx["task"](theta, *(f[t] for f in batch), state)
            grads.append(g)
        ctx["state"] = state
        return {k: torch.stack([g[k] for g in grads]).mean(0) for k in theta}
    grads, finals = ctx["vmapped"](theta, *batch, ctx["state"])
    if ctx["state"] is not None:  # batched: the state advances to the mean of the tasks' final states
        ctx["state"] = tree_map(lambda x: x.mean(0), finals)
    return {k: g.mean(0) for k, g in grads.items()}


def func_step(s: Setting, model: nn.Module) -> Step:
    opt, ctx = outer_optimizer(s, model), func_context(s, model)
    return lambda batch: _apply(model, opt, func_meta_grad(s, model, batch, ctx))


# ----------------------------------------------------------------------------------------------- (d) floor
def floor_step(s: Setting, model: nn.Module, chunk: int | None = None) -> Step:
    """Forward+backward passes of the meta-batch's images as one shared-weight batch (see the module docstring);
    `chunk` tasks per batch instead (`--floor-chunk`), to see what one huge batch costs in cache misses."""
    params = list(model.parameters())

    def fwd_bwd(x: Tensor, y: Tensor) -> None:
        for i in range(0, x.shape[0], chunk or x.shape[0]):
            xc, yc = x[i : i + (chunk or x.shape[0])], y[i : i + (chunk or x.shape[0])]
            torch.autograd.grad(F.cross_entropy(model(xc.flatten(0, 1)), yc.flatten()), params)

    def step(batch: Episode) -> None:
        xs, ys = batch.support_x, batch.support_y
        for k in range(s.inner.steps):
            idx = batch_indices(k, s.inner.batch_size, ys.shape[1], ys.device)
            fwd_bwd(*((xs, ys) if idx is None else (xs[:, idx], ys[:, idx])))
        if s.algorithm != "reptile":
            fwd_bwd(batch.query_x, batch.query_y)
        if s.algorithm == "imaml":
            for _ in range(s.cg_steps):
                fwd_bwd(xs, ys)

    return step


# ----------------------------------------------------------------------------------------------- peers
def higher_step(s: Setting, model: nn.Module) -> Step:
    """higher's documented MAML loop (`innerloop_ctx`); FOMAML with `track_higher_grads=False`."""
    import higher

    if s.algorithm not in ("maml", "fomaml"):
        raise NotImplementedError
    opt, inner_opt = outer_optimizer(s, model), _inner_optimizer(s, model.parameters())
    first_order = s.algorithm == "fomaml"

    def step(batch: Episode) -> None:
        opt.zero_grad()
        tasks = batch.support_x.shape[0]
        for t in range(tasks):
            xs, ys, xq, yq = (f[t] for f in batch)
            ctx = higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order)
            with ctx as (fmodel, diffopt):
                for k in range(s.inner.steps):
                    x, y = _mini(xs, ys, batch_indices(k, s.inner.batch_size, len(ys), ys.device))
                    diffopt.step(F.cross_entropy(fmodel(x), y))
                loss = F.cross_entropy(fmodel(xq), yq) / tasks
                if first_order:
                    grads = torch.autograd.grad(loss, list(fmodel.parameters()))
                    for p, g in zip(model.parameters(), grads, strict=True):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    loss.backward()
        opt.step()

    return step


def learn2learn_step(s: Setting, model: nn.Module) -> Step:
    """learn2learn's documented MAML loop (`MAML.clone`, `adapt`); FOMAML with `first_order=True`."""
    import learn2learn as l2l

    if s.algorithm not in ("maml", "fomaml") or s.inner.optimizer != "sgd":
        raise NotImplementedError
    maml = l2l.algorithms.MAML(model, lr=s.inner.lr, first_order=s.algorithm == "fomaml")
    opt = outer_optimizer(s, model)

    def step(batch: Episode) -> None:
        opt.zero_grad()
        tasks = batch.support_x.shape[0]
        for t in range(tasks):
            xs, ys, xq, yq = (f[t] for f in batch)
            learner = maml.clone()
            for k in range(s.inner.steps):
                x, y = _mini(xs, ys, batch_indices(k, s.inner.batch_size, len(ys), ys.device))
                learner.adapt(F.cross_entropy(learner(x), y))
            (F.cross_entropy(learner(xq), yq) / tasks).backward()
        opt.step()

    return step


def peer_available(name: str) -> bool:
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
    except Exception as error:  # installed but broken (e.g. learn2learn without a matching torchvision)
        print(f"  {name} does not import ({type(error).__name__}: {error}); its row is skipped", file=sys.stderr)
        return False
    return True


ROW_FACTORIES: dict[str, Callable[[Setting, nn.Module], Step]] = {
    "b": plain_step, "c": func_step, "d": floor_step, "higher": higher_step, "learn2learn": learn2learn_step,
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- measurement
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


def time_row(step: Step, batches: list[Episode], warmup: int, memory: bool, device: str = "cpu") -> dict:
    seconds = []
    for i, batch in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        step(batch)
        sync(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    out = {"ms": statistics.median(seconds) * 1e3, "all_ms": [t * 1e3 for t in seconds]}
    if memory:
        with TensorPeak(device) as peak:
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


def time_train(
    preset: str, overrides: list[str], warmup: int, repeats: int, threads: int, memory: bool, device: str = "cpu"
) -> dict:
    """(a): the train.py loop in a child process, `warmup + repeats + 1` timed steps plus one profiled step."""
    steps = warmup + repeats + 1 + (1 if memory else 0)
    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        argv = [
            f"experiment={preset}", *overrides, "data.val_episodes=0", "trainer.limit_test_batches=0",
            f"trainer.max_steps={steps}", f"output_dir={Path(tmp) / 'run'}",
        ]  # fmt: skip
        spec = dict(argv=argv, steps=steps, warmup=warmup, threads=threads, memory=memory, device=device)
        spec["out"] = str(Path(tmp) / "t.json")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        log = Path(tmp) / "log.txt"
        with open(log, "w") as fh:
            proc = subprocess.run(
                [sys.executable, __file__, "--train-child", json.dumps(spec)], cwd=REPO, env=env, stdout=fh,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        if proc.returncode != 0:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"train.py child failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(Path(spec["out"]).read_text())
    ms = [t * 1e3 for t in result["intervals"]]
    return {"ms": statistics.median(ms), "mean_ms": statistics.fmean(ms), "all_ms": ms, "mb": result["mb"],
            "wall_s": result["wall"], "argv": argv}  # fmt: skip


# ----------------------------------------------------------------------------------------------- driver
def preset_name(name: str) -> str:
    return name if "_" in name else f"{name}_omniglot_5w1s"


def measure(preset: str, queries: int, args, rows: list[str]) -> dict:
    """Every row of one (preset, queries) cell: {"rows": {row: {...}}, "sampling": {...}, "setting": ...}."""
    overrides = [f"data.root={args.root}", f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}"]
    if queries != 1:
        overrides += [f"data.queries={queries}", f"data.train_queries={queries}"]
    if args.quick:
        overrides += QUICK
    overrides += args.set
    cfg = load_config([f"experiment={preset}", *overrides])
    s = preset_settings(cfg)
    datamodule = instantiate(cfg.data)
    try:
        datamodule.setup("fit")
    except ValueError as error:  # Reptile's 10 training shots + 15 queries > 20 drawings per character
        if "shots+queries" not in str(error):
            raise
        return {"skip": str(error).split(";")[0], "setting": asdict(s)}
    size = datamodule.meta_batch_size
    shots = (datamodule.train_shots, datamodule.train_queries)
    count = args.warmup + args.repeats
    stream = EpisodeBatches(datamodule.sources["train"], datamodule.seed, "train", shots, range(count * size), size)
    batches, sample_s = [], []
    for i in range(count):  # the meta-batches train.py trains on first, drawn as its loader draws them
        start = time.perf_counter()
        batches.append(stream[i])
        sample_s.append(time.perf_counter() - start)
    batches = [Episode(*(f.to(args.device) for f in b)) for b in batches]
    sampling = {"ms_per_meta_batch": statistics.median(sample_s) * 1e3}
    sampling["episodes_per_s"] = size / (sampling["ms_per_meta_batch"] / 1e3)
    out = {"setting": asdict(s), "describe": describe(s, cfg, size), "rows": {}, "sampling": sampling}

    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model).to(args.device)
    init = copy.deepcopy(model.state_dict())
    for row in rows:
        label = f"{preset} q={queries} {ROW_TITLES[row]}"
        try:
            if row == "a":
                result = time_train(
                    preset, overrides, args.warmup, args.repeats, args.threads, args.memory, args.device
                )
            else:
                if row in PEERS and not args.peers[row]:
                    continue
                model.load_state_dict(init)
                try:
                    step = floor_step(s, model, args.floor_chunk) if row == "d" else ROW_FACTORIES[row](s, model)
                except NotImplementedError:
                    continue  # the peer has no implementation of this algorithm
                result = time_row(step, batches, args.warmup, args.memory, args.device)
        except Exception as error:
            print(f"  {label}: failed: {error}", file=sys.stderr)
            out["rows"][row] = {"error": str(error)}
            continue
        out["rows"][row] = result
        mem = f", {result['mb']:.1f} MB" if result.get("mb") is not None else ""
        print(f"  {label}: {result['ms']:.1f} ms{mem}", file=sys.stderr, flush=True)
    a = out["rows"].get("a", {})
    if "ms" in a:
        sampling["consumed_episodes_per_s"] = size / (a["ms"] / 1e3)
        sampling["headroom"] = sampling["episodes_per_s"] / sampling["consumed_episodes_per_s"]
    return out


def _ms(cell: dict, key: str = "ms") -> float | None:
    value = cell.get(key) if cell else None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _fmt(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.{(1 if abs(value) < 100 else 0) if digits is None else digits}f}"


def _ratio(num: float | None, den: float | None) -> str:
    return "–" if num is None or den is None or den == 0 else f"{num / den:.2f}×"


def tables(results: dict, rows: list[str]) -> str:
    """Markdown: per queries setting, ms/meta-iteration with the ratios, then peak memory; then sampling."""
    lines = []
    shown = [r for r in rows if any(r in cell.get("rows", {}) for q in results.values() for cell in q.values())]
    peers_shown = [r for r in shown if r in ("b", *PEERS)]
    for queries, cells in results.items():
        lines += [f"\n**{queries} query image(s) per class: ms per meta-iteration (median)**\n"]
        head = ["algorithm (preset)", *(ROW_TITLES[r] for r in shown), "(b)/(a)", "(a)/(c)", "(a)/(d)",
                "fastest of (b)+peers/(a)"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for preset, cell in cells.items():
            name = f"{preset} ({cell.get('describe', '')})"
            if "skip" in cell:
                lines.append("| " + " | ".join([preset, f"skipped: {cell['skip']}", *["–"] * (len(head) - 2)]) + " |")
                continue
            ms = {r: _ms(cell["rows"].get(r, {})) for r in shown}
            fastest = [ms[r] for r in peers_shown if ms.get(r) is not None]
            a = ms.get("a")
            lines.append(
                "| " + " | ".join([name, *(_fmt(ms[r]) if r != "a" else f"**{_fmt(a)}**" for r in shown),
                                    _ratio(ms.get("b"), a), _ratio(a, ms.get("c")), _ratio(a, ms.get("d")),
                                    _ratio(min(fastest) if fastest else None, a)]) + " |"
            )  # fmt: skip
        if any(_ms(c, "mb") is not None for cell in cells.values() for c in cell.get("rows", {}).values()):
            lines += [f"\n**{queries} query image(s) per class: peak tensor memory of one meta-iteration (MB)**\n"]
            head = ["algorithm (preset)", *(ROW_TITLES[r] for r in shown), "(a)/(b)"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for preset, cell in cells.items():
                if "skip" in cell:
                    continue
                mb = {r: _ms(cell["rows"].get(r, {}), "mb") for r in shown}
                lines.append("| " + " | ".join([preset, *(_fmt(mb[r], 1) for r in shown),
                                                 _ratio(mb.get("a"), mb.get("b"))]) + " |")  # fmt: skip
    lines += ["\n**Episode sampling (the training loader's draw, one process)**\n"]
    head = ["algorithm (preset)", "queries/class", "ms per meta-batch", "episodes/s", "(a) consumes episodes/s",
            "sampling/consumption"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for queries, cells in results.items():
        for preset, cell in cells.items():
            sm = cell.get("sampling")
            if not sm:
                continue
            lines.append("| " + " | ".join([preset, str(queries), _fmt(sm["ms_per_meta_batch"], 1),
                                             _fmt(sm["episodes_per_s"]), _fmt(sm.get("consumed_episodes_per_s"), 1),
                                             _ratio(sm.get("headroom"), 1.0)]) + " |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--train-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        return args
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
    args = parse_args(argv)
    if args.train_child:
        train_child(json.loads(args.train_child))
        return {}
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


if __name__ == "__main__":
    main()
