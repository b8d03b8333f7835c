"""The optional peer rows: each library's documented MAML loop, run when the library imports (neither is a
dependency of lightning_meta)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.speed.presets import Setting
from benchmarks.speed.reference import Step, batch_indices, inner_optimizer, mini, outer_optimizer
from lightning_meta.data.episode import Episode

PEERS = ("higher", "learn2learn")


def higher_step(s: Setting, model: nn.Module) -> Step:
    """higher's documented MAML loop (`innerloop_ctx`); FOMAML with `track_higher_grads=False`."""
    import higher

    if s.algorithm not in ("maml", "fomaml"):
        raise NotImplementedError
    opt, inner_opt = outer_optimizer(s, model), inner_optimizer(s, model.parameters())
    first_order = s.algorithm == "fomaml"

    def step(batch: Episode) -> None:
        opt.zero_grad()
        tasks = batch.support_x.shape[0]
        for t in range(tasks):
            xs, ys, xq, yq = (f[t] for f in batch)
            ctx = higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order)
            with ctx as (fmodel, diffopt):
                for k in range(s.inner.steps):
                    x, y = mini(xs, ys, batch_indices(k, s.inner.batch_size, len(ys), ys.device))
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
                x, y = mini(xs, ys, batch_indices(k, s.inner.batch_size, len(ys), ys.device))
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
