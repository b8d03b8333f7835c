"""The reference rows, each a meta-iteration on the same meta-batches as lightning_meta (see the package docstring):
(b) the plain loop one task at a time, (c) minimal torch.func, (d) the compute floor proxy."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.utils._pytree import tree_map

from benchmarks.speed.presets import Setting
from lightning_meta.algorithms.functional import conjugate_gradient
from lightning_meta.data.episode import Episode

Params = dict[str, Tensor]
Step = Callable[[Episode], None]


def batch_indices(step: int, batch_size: int | None, n: int, device=None) -> Tensor | None:
    """Inner mini-batch `step`: consecutive examples, wrapping around the (pre-shuffled) support set."""
    if batch_size is None or batch_size >= n:
        return None
    return torch.arange(step * batch_size, (step + 1) * batch_size, device=device) % n


def mini(x: Tensor, y: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor]:
    return (x, y) if idx is None else (x[idx], y[idx])


def outer_optimizer(s: Setting, model: nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.SGD if s.optimizer == "sgd" else torch.optim.Adam
    return cls(model.parameters(), lr=s.lr)


def inner_optimizer(s: Setting, params) -> torch.optim.Optimizer:
    if s.inner.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.inner.lr, betas=(0.0, 0.999))
    return torch.optim.SGD(params, lr=s.inner.lr)


def _apply(model: nn.Module, opt: torch.optim.Optimizer, meta_grad: Params) -> None:
    for name, p in model.named_parameters():
        p.grad = meta_grad[name].to(p.dtype)
    opt.step()


def _stateful(s: Setting) -> bool:
    """Whether the inner optimizer's state outlives a task (Reptile's carried or batched Adam state)."""
    return s.algorithm == "reptile" and s.inner.optimizer == "adam" and s.inner_state != "fresh"


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
            x, y = mini(xs, ys, batch_indices(step, s.inner.batch_size, len(ys), ys.device))
            loss = F.cross_entropy(conv4_forward(model, fast, x), y)
            grads = torch.autograd.grad(loss, fast, create_graph=second_order)
            if s.inner.optimizer == "adam":
                fast, v = _adam0(fast, grads, v, step + 1, s.inner.lr)
            else:
                fast = [w - s.inner.lr * g for w, g in zip(fast, grads, strict=True)]
        (F.cross_entropy(conv4_forward(model, fast, xq), yq) / tasks).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def plain_context(s: Setting, model: nn.Module) -> dict:
    """What (b) keeps between meta-iterations: the fast model (loaded with theta per task) and, for a carried or
    batched Reptile state, the one `torch.optim.Adam` whose moments outlive the tasks (as supervised-reptile's)."""
    fast = copy.deepcopy(model)
    return {"fast": fast, "opt": inner_optimizer(s, fast.parameters()) if _stateful(s) else None}


def _adapt(s: Setting, fast_model: nn.Module, opt: torch.optim.Optimizer, theta: list[Tensor], xs, ys) -> None:
    """The inner steps of one task on `fast_model` (loaded with theta) by `opt`; iMAML's objective adds the proximal
    term lam/2 ||phi - theta||^2."""
    fast = list(fast_model.parameters())
    for step in range(s.inner.steps):
        x, y = mini(xs, ys, batch_indices(step, s.inner.batch_size, len(ys), ys.device))
        opt.zero_grad()
        loss = F.cross_entropy(fast_model(x), y)
        if s.algorithm == "imaml":
            loss = loss + 0.5 * s.lam * sum(((w - p) ** 2).sum() for w, p in zip(fast, theta, strict=True))
        loss.backward()
        opt.step()


def _plain_implicit_grad(s: Setting, fast_model: nn.Module, xs, ys, xq, yq) -> Tensor:
    """iMAML's meta-gradient of one task as a flat vector: the solution v of (I + H/lam + damping I) v =
    grad L_query(phi) by conjugate gradient (imaml_dev's cg_solve), each Hessian-vector product recomputing the
    support loss and taking a double backward."""
    fast = list(fast_model.parameters())
    b = _flat(torch.autograd.grad(F.cross_entropy(fast_model(xq), yq), fast))

    def matvec(vec: Params) -> Params:  # (I + H/lam) v, v the one flat entry "v"
        g = _flat(torch.autograd.grad(F.cross_entropy(fast_model(xs), ys), fast, create_graph=True))
        hvp = _flat(torch.autograd.grad((g * vec["v"]).sum(), fast))
        return {"v": vec["v"] + hvp / s.lam}

    return conjugate_gradient(matvec, {"v": b}, s.cg_steps, s.cg_damping)["v"]


def _mean_state(finals: list[dict]) -> dict:
    """An optimizer state dict whose state tensors are the mean of the given ones'."""
    mean = copy.deepcopy(finals[0])
    for i, state in mean["state"].items():
        for key in state:
            state[key] = torch.stack([f["state"][i][key] for f in finals]).mean(0)
    return mean


def plain_torch_optim_grad(s: Setting, model: nn.Module, batch: Episode, ctx: dict) -> Params:
    """Reptile and iMAML one task at a time on a fast model loaded with theta, inner steps by `torch.optim`: a fresh
    optimizer per task, or the carried one (on from the previous task), or for a batched state the carried one
    restarted from the same state for every task, which then advances to the mean of the tasks' final states."""
    fast_model, carried = ctx["fast"], ctx["opt"]
    theta = [p.detach() for p in model.parameters()]
    meta, tasks = torch.zeros_like(_flat(theta)), batch.support_x.shape[0]
    batched = carried is not None and s.inner_state == "batched"
    start, finals = (copy.deepcopy(carried.state_dict()) if batched else None), []
    for t in range(tasks):
        xs, ys, xq, yq = (f[t] for f in batch)
        with torch.no_grad():
            for w, p in zip(fast_model.parameters(), theta, strict=True):
                w.copy_(p)
        opt = inner_optimizer(s, fast_model.parameters()) if carried is None else carried
        if batched:  # a copy: load_state_dict keeps the tensors it is given, and Adam updates them in place
            opt.load_state_dict(copy.deepcopy(start))
        _adapt(s, fast_model, opt, theta, xs, ys)
        if batched:
            finals.append(copy.deepcopy(opt.state_dict()))
        if s.algorithm == "reptile":
            task_grad = _flat(theta) - _flat(p.detach() for p in fast_model.parameters())
        else:
            task_grad = _plain_implicit_grad(s, fast_model, xs, ys, xq, yq)
        meta.add_(task_grad, alpha=1.0 / tasks)
    if batched:
        carried.load_state_dict(_mean_state(finals))
    sizes = [p.numel() for p in theta]
    return {name: m.view_as(p) for (name, p), m in zip(model.named_parameters(), meta.split(sizes), strict=True)}


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
class FuncTask:
    """Per-task (theta, xs, ys, xq, yq, state) -> (meta-gradient, final inner state) with torch.func, to `vmap`
    over tasks. `state` is Reptile's carried inner Adam state (t, v), or None for a fresh one; other algorithms
    return the empty state ()."""

    def __init__(self, s: Setting, model: nn.Module) -> None:
        self.s, self.model = s, model

    def __call__(self, theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, state=None):
        s = self.s
        if s.algorithm == "maml":
            return grad(lambda th: self.loss(self.inner(th, xs, ys)[0], xq, yq))(theta), ()
        phi, final = self.inner(theta, xs, ys, state)
        phi = {k: w.detach() for k, w in phi.items()}
        if s.algorithm == "reptile":
            return {k: theta[k] - phi[k] for k in theta}, (final if _stateful(s) else ())
        gq = grad(self.loss)(phi, xq, yq)
        if s.algorithm == "fomaml":
            return gq, ()
        support_grad = grad(lambda p: self.loss(p, xs, ys))

        def matvec(vec: Params) -> Params:  # (I + H/lam) v, H v by forward-over-reverse
            hvp = jvp(support_grad, (phi,), (vec,))[1]
            return {k: vec[k] + hvp[k] / s.lam for k in vec}

        return conjugate_gradient(matvec, gq, s.cg_steps, s.cg_damping), ()

    def loss(self, p: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.model, p, (x,)), y)

    def objective(self, phi: Params, theta: Params, x: Tensor, y: Tensor) -> Tensor:
        out = self.loss(phi, x, y)
        if self.s.algorithm == "imaml":
            out = out + 0.5 * self.s.lam * sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
        return out

    def inner(self, theta: Params, xs: Tensor, ys: Tensor, state=None):
        """The inner steps from theta: (phi, final (t, v)), t the Adam step count and v its second moments."""
        s = self.s
        if state is None:  # fresh: zero step count and second moments (SGD has none)
            moments = {k: torch.zeros_like(w) for k, w in theta.items()} if s.inner.optimizer == "adam" else {}
            state = (torch.zeros((), dtype=xs.dtype, device=xs.device), moments)
        phi, (t, v) = theta, state
        for step in range(s.inner.steps):
            x, y = mini(xs, ys, batch_indices(step, s.inner.batch_size, ys.shape[0], ys.device))
            g = grad(self.objective)(phi, theta, x, y)
            if s.inner.optimizer == "adam":
                t = t + 1
                v = {k: 0.999 * v[k] + 0.001 * g[k] ** 2 for k in v}
                c = 1 - 0.999**t
                phi = {k: phi[k] - s.inner.lr * g[k] / ((v[k] / c).sqrt() + 1e-8) for k in phi}
            else:
                phi = {k: phi[k] - s.inner.lr * g[k] for k in phi}
        return phi, (t, v)


def func_context(s: Setting, model: nn.Module) -> dict:
    """What (c) keeps between meta-iterations: the per-task function, its vmap, and Reptile's carried state."""
    task = FuncTask(s, model)
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
    """Forward+backward passes of the meta-batch's images as one shared-weight batch (see the package docstring);
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
