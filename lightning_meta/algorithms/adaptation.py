"""How one task is adapted: the inner-loop hooks of `MetaLearner`, and the rule by which a fast path decides
whether it honours a learner's hooks.

A subclass changes adaptation by overriding these hooks (ANIL and BOIL `adapts`, Meta-SGD `inner_lr`, iMAML
`inner_objective`, Reptile `initial_state`, ProtoMAML `inner_trajectory`). Every batching path calls them, so a
per-task function written on them (`meta_gradient`, `inner_loop`) computes the same on every path. A path derived
by hand from the default hooks (MAML's split path) is taken only for a learner that overrides none of the hooks it
was derived from: `overridden` tells, from the learner's class, not from its name.
"""

from __future__ import annotations

from collections import deque

from torch import Tensor
from torch.func import vmap

from lightning_meta.algorithms import batching as paths
from lightning_meta.algorithms.functional import Params, detach
from lightning_meta.algorithms.inner import InnerLoop, Lr
from lightning_meta.data.episode import Episode

# The hooks that decide what the inner loop computes.
INNER_HOOKS = ("adapts", "inner_lr", "inner_objective", "initial_state", "inner_iterates", "inner_trajectory",
               "inner_loop")  # fmt: skip


def overridden(learner: object, base: type, hooks: tuple[str, ...]) -> list[str]:
    """The hooks among `hooks` that `learner`'s class defines differently from `base` (a subclass's own methods,
    or a mixin's): a path derived from `base`'s hooks is not taken for a learner that changes them."""
    return [hook for hook in hooks if getattr(type(learner), hook) is not getattr(base, hook)]


class Adaptation:
    """The inner-loop hooks, and the two halves of the split paths built on them (a mixin of `MetaLearner`, which
    supplies `scaled_grad`, `loss`, `query_objective`, `inner`, `chunk_size` and the backbone's parameter names)."""

    def adapts(self, name: str) -> bool:
        """Whether the inner loop moves meta-parameter `name` (default: every backbone parameter; ANIL: the head)."""
        return name in self._backbone_names

    def inner_lr(self, params: Params, loop: InnerLoop) -> Lr:
        """The inner step size: `loop.lr`, or one tensor per adapted weight (Meta-SGD's learned step sizes)."""
        return loop.lr

    def inner_objective(self, phi: Params, theta: Params, x: Tensor, y: Tensor, loop: InnerLoop) -> Tensor:
        """What the inner loop minimises on a support batch: the support loss (iMAML adds a proximal term)."""
        return self.loss(phi, x, y)[0]

    def initial_state(self, loop: InnerLoop):
        """The inner optimizer's state a task starts from (None: fresh; Reptile may carry a trained one)."""
        return None

    def inner_iterates(self, params: Params, support_x: Tensor, support_y: Tensor, loop: InnerLoop, state=None):
        """The inner loop step by step: yields (fast, optimizer state) at the start and after each of `loop.steps`
        optimizer steps on `inner_objective` from `state` (None: fresh); fast holds the adapted weights only.
        Shapes: support_x (N*K, *x), support_y (N*K,)."""
        fast = {k: v for k, v in params.items() if self.adapts(k)}
        optimizer, lr = loop.make_optimizer(), self.inner_lr(params, loop)
        state = optimizer.init(fast) if state is None else state
        objective = lambda f, x, y: self.inner_objective({**params, **f}, params, x, y, loop)
        yield fast, state
        for step in range(loop.steps):
            x, y = loop.batch(step, support_x, support_y)
            fast, state = optimizer.step(fast, self.scaled_grad(objective)(fast, x, y), state, lr)
            yield fast, state

    def inner_trajectory(self, params: Params, support_x: Tensor, support_y: Tensor, loop: InnerLoop, state=None):
        """(phi, final optimizer state) of `inner_iterates`; phi holds every meta-parameter, the adapted ones moved.
        No graph is kept unless the caller differentiates through it (MAML runs this under `torch.func.grad`)."""
        fast, state = deque(self.inner_iterates(params, support_x, support_y, loop, state), maxlen=1)[0]
        return {**params, **fast}, state

    def inner_loop(self, params: Params, support_x: Tensor, support_y: Tensor, loop: InnerLoop | None = None):
        """The fast weights phi of one task under `loop` (default: `inner`), from `initial_state(loop)`."""
        loop = self.inner if loop is None else loop
        return self.inner_trajectory(params, support_x, support_y, loop, self.initial_state(loop))[0]

    def adapted_per_task(self, params: Params, batch: Episode) -> Params:
        """The split paths' first half: every task's fast weights (`inner_loop`, no graph), in one vmap over the
        tasks' support sets. Shapes: each entry (T, *param)."""
        adapt = lambda p, x, y: detach(self.inner_loop(p, x, y, self.inner))
        return vmap(adapt, in_dims=(None, 0, 0), chunk_size=self.chunk_size)(params, *batch[:2])

    def query_gradients_per_task(self, fast: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        """(query-loss gradients, metrics) of per-task fast weights (leading task dimension), one task at a time:
        the split paths' second half, which holds one task's large query graph at a time."""
        query = self.scaled_grad(self.query_objective, has_aux=True)
        return paths.map_tasks(query, fast, batch, "loop", per_task_params=True)
