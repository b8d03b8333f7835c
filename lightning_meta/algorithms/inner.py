"""The inner loop as a value: how one task is adapted (`InnerLoop`), and functional inner optimizers whose state is
explicit, so that it can start fresh per task or be carried from task to task (supervised-reptile's inner Adam).

An `InnerLoop` is frozen: evaluation settings, adaptation curves and `adapt()` derive new values with `replace`
instead of mutating the learner. Optimizers are pure: `init(fast) -> state`, `step(fast, grads, state, lr) ->
(fast, state)`, with no data-dependent control flow, so they run inside `vmap` and under `torch.func.grad`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch._C._functorch import maybe_current_level
from torch.utils._pytree import tree_flatten, tree_unflatten

from lightning_meta.algorithms.functional import Params
from lightning_meta.errors import ConfigError

Lr = float | Params  # one step size, or one per tensor (element-wise, as Meta-SGD's learned step sizes)


def _foreach_ok(*trees: Params) -> bool:
    """Whether a step may use the multi-tensor `torch._foreach_*` kernels: outside every torch.func transform and
    with nothing to differentiate through (Reptile's and FOMAML's per-task loop, evaluation). They compute the
    same operations in the same order, one call per operation instead of one per tensor: on a GPU a few launches
    instead of hundreds, on a CPU less Python. Inside vmap/grad, or when a graph is kept (MAML's second order),
    the per-tensor form runs."""
    if maybe_current_level() is not None:
        return False
    return not any(t.requires_grad for tree in trees for t in tree.values())


def _values(tree: Params, keys: list[str]) -> list[Tensor]:
    return [tree[k] for k in keys]


class SGD:
    """Plain gradient descent; stateless (its state is the empty tuple)."""

    def init(self, fast: Params) -> tuple:
        return ()

    def step(self, fast: Params, grads: Params, state: tuple, lr: Lr) -> tuple[Params, tuple]:
        if _foreach_ok(fast, grads) and not isinstance(lr, dict):
            keys = list(fast)
            moved = torch._foreach_sub(_values(fast, keys), torch._foreach_mul(_values(grads, keys), lr))
            return dict(zip(keys, moved, strict=True)), state
        if isinstance(lr, dict):
            return {k: fast[k] - lr[k] * grads[k] for k in fast}, state
        return {k: fast[k] - lr * grads[k] for k in fast}, state


def _root(v: Tensor) -> Tensor:
    """sqrt(v) for Adam's denominator, with derivative 0 at v = 0 where a graph is kept: the same value, and a
    finite second-order meta-gradient through Adam steps (MAML with `inner.optimizer=adam`). At step 1,
    v = (1 - beta2) g^2 is 0 wherever g is 0 (a dead unit, an unused weight); sqrt's infinite derivative there,
    times dv/dg = 0, makes the whole meta-gradient NaN. sqrt(v) = sqrt(1 - beta2) |g| there, and 0 is the
    symmetric subgradient of |g| at g = 0."""
    if not v.requires_grad:  # nothing differentiates through it: the plain root
        return v.sqrt()
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


class Adam:
    """Adam with beta1 = 0 (the Reptile paper's inner optimizer), bitwise `torch.optim.Adam(betas=(0, beta2))`:
    v <- beta2 v + (1 - beta2) g^2; fast <- fast - lr g / (sqrt(v) / sqrt(1 - beta2^t) + eps), with torch's
    operations in torch's order (the fused multiply-add of `addcmul`, the bias correction in float64).

    The state is (t, v): the step count as a 0-dim tensor and the second moments, one tensor per fast weight.
    TensorFlow's Adam (supervised-reptile) puts eps outside the bias correction: the two differ by eps-sized terms.
    Differentiated through (second-order MAML), the root's derivative at v = 0 is taken as 0 (`_root`).
    """

    def __init__(self, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.beta2, self.eps = beta2, eps

    def init(self, fast: Params) -> tuple[Tensor, Params]:
        first = next(iter(fast.values()))
        return torch.zeros((), dtype=first.dtype, device=first.device), {
            k: torch.zeros_like(v) for k, v in fast.items()
        }

    def step(self, fast: Params, grads: Params, state: tuple[Tensor, Params], lr: Lr) -> tuple[Params, tuple]:
        t, v = state
        t = t + 1
        # torch.optim.Adam's bias_correction2 ** 0.5: a Python float, which meets a tensor in the tensor's dtype
        root = (1 - self.beta2 ** t.double()).sqrt().to(t.dtype)
        if _foreach_ok(fast, grads, v) and not isinstance(lr, dict):
            return self._foreach_step(fast, grads, v, t, root, lr)
        v = {k: torch.addcmul(self.beta2 * v[k], grads[k], grads[k], value=1 - self.beta2) for k in v}
        denominator = {k: _root(v[k]) / root + self.eps for k in v}
        if isinstance(lr, dict):
            return {k: fast[k] - lr[k] * grads[k] / denominator[k] for k in fast}, (t, v)
        return {k: torch.addcdiv(fast[k], grads[k], denominator[k], value=-lr) for k in fast}, (t, v)

    def _foreach_step(self, fast: Params, grads: Params, v: Params, t: Tensor, root: Tensor, lr: float):
        """`step`'s arithmetic, operation by operation, on lists (bitwise the same on CPU): six multi-tensor
        passes, as `torch.optim.Adam(foreach=True)` makes them."""
        keys = list(fast)
        g = _values(grads, keys)
        v_new = torch._foreach_mul(_values(v, keys), self.beta2)
        torch._foreach_addcmul_(v_new, g, g, 1 - self.beta2)
        denominator = torch._foreach_sqrt(v_new)
        torch._foreach_div_(denominator, root)
        torch._foreach_add_(denominator, self.eps)
        moved = torch._foreach_addcdiv(_values(fast, keys), g, denominator, -lr)
        return dict(zip(keys, moved, strict=True)), (t, dict(zip(keys, v_new, strict=True)))


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


@dataclass(frozen=True)
class InnerLoop:
    """How a task is adapted: `steps` steps of `optimizer` at step size `lr` on support mini-batches.

    Args:
        steps: inner steps per task.
        lr: inner step size.
        batch_size: support examples per step, taken consecutively from the (shuffled) support set and wrapping
            around; None: the whole support set every step.
        optimizer: "sgd", or "adam" (beta1 = 0, as the Reptile paper).
    """

    steps: int = 1
    lr: float = 0.01
    batch_size: int | None = None
    optimizer: str = "sgd"

    def check(self, where: str) -> InnerLoop:
        """Raise a ConfigError naming the config key (`algorithm.<where>.<field>`) of a value out of range."""
        problems = {
            "steps": self.steps < 0 or int(self.steps) != self.steps,
            "lr": not self.lr >= 0,
            "batch_size": self.batch_size is not None and self.batch_size < 1,
            "optimizer": self.optimizer not in OPTIMIZERS,
        }
        hints = {"steps": "an integer >= 0", "lr": "a step size >= 0", "batch_size": "null or at least 1",
                 "optimizer": " or ".join(OPTIMIZERS)}  # fmt: skip
        for field, bad in problems.items():
            if bad:
                raise ConfigError(f"algorithm.{where}.{field}={getattr(self, field)!r}; use {hints[field]}")
        return self

    def replace(self, **changes) -> InnerLoop:
        """A copy with some fields changed, e.g. `learner.eval_inner.replace(steps=100)`."""
        return dataclasses.replace(self, **changes)

    def make_optimizer(self) -> SGD | Adam:
        return OPTIMIZERS[self.optimizer]()

    def batch(self, step: int, support_x: Tensor, support_y: Tensor) -> tuple[Tensor, Tensor]:
        """Inner mini-batch `step`: consecutive examples, wrapping around the support set.

        Shapes:
            support_x (N*K, *x), support_y (N*K,) -> (B, *x), (B,).
        """
        n = support_x.shape[0]
        if self.batch_size is None or self.batch_size >= n:
            return support_x, support_y
        start = (step * self.batch_size) % n
        if start + self.batch_size <= n:  # a plain slice: no gather, and no index tensor inside vmap
            return support_x[start : start + self.batch_size], support_y[start : start + self.batch_size]
        idx = torch.arange(start, start + self.batch_size, device=support_x.device) % n
        return support_x[idx], support_y[idx]


def settings_from(value, default, where: str):
    """A settings value (`InnerLoop`, `OuterLoop`) from a config value: an instance, a dict of its fields (missing
    ones from `default`), or None (`default`), checked. Dataclass subclasses (iMAML's `ProximalLoop`) follow
    `default`'s class."""
    if value is None:
        settings = default
    elif isinstance(value, type(default)) or dataclasses.is_dataclass(value):
        settings = value
    else:
        fields = {f.name for f in dataclasses.fields(default)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ConfigError(f"unknown key algorithm.{where}.{unknown[0]}; valid: {', '.join(sorted(fields))}")
        settings = dataclasses.replace(default, **value)
    return settings.check(where)


def declared_default(cls: type, name: str):
    """The default of constructor argument `name` as the most derived class in `cls`'s MRO declares it (None when
    none does): what a partial dict of `InnerLoop` fields is completed from."""
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        param = inspect.signature(init).parameters.get(name) if init else None
        if param is not None and param.default is not param.empty:
            return param.default
    return None


class StateBuffers(nn.Module):
    """An inner optimizer's state (any tree of tensors) held as buffers, so that it is saved in the checkpoint,
    restored on resume and moved and converted with the module. `get()` returns the tree, `set()` overwrites it."""

    def __init__(self, state) -> None:
        super().__init__()
        leaves, self._spec = tree_flatten(state)
        for i, leaf in enumerate(leaves):
            self.register_buffer(f"s{i}", leaf.detach().clone())
        self._count = len(leaves)

    def get(self):
        return tree_unflatten([getattr(self, f"s{i}") for i in range(self._count)], self._spec)

    def set(self, state) -> None:
        with torch.no_grad():
            for i, leaf in enumerate(tree_flatten(state)[0]):
                getattr(self, f"s{i}").copy_(leaf)
