"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019), with its inner problem solved by gradient descent
("iMAML, GD") or by Hessian-free Newton-CG steps ("iMAML, Hessian-Free")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.func import jvp, vmap

from lightning_meta.algorithms.adaptation import overridden
from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.functional import Params, axpy, conjugate_gradient, detach, squared_distance
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.algorithms.newton import newton_cg_step
from lightning_meta.data.episode import Episode
from lightning_meta.errors import ConfigError

SOLVERS = ("gd", "hf")


@dataclass(frozen=True)
class ProximalLoop(InnerLoop):
    """iMAML's inner loop: minimise G(phi) = L_support(phi) + lam/2 ||phi - theta||^2 from phi = theta, by
    `steps` steps of `solver`.

    solver="hf" is the paper's Hessian-free variant (Table 2, "iMAML, Hessian-Free": "5 CG steps to compute the
    search direction and performs line-search to pick step size"). Each of the `steps` Newton steps takes the
    direction d ~ (H + lam I)^-1 grad G(phi) from `hf_cg_steps` CG steps on Hessian-vector products of G
    (stopped at negative curvature: the loss is not convex, see algorithms/newton.py), then
    moves to phi - t d for the t in {0, *hf_step_sizes} with the lowest G (t = 0 keeps a step from ever raising
    G). A step costs 1 gradient, `hf_cg_steps` Hessian-vector products and len(hf_step_sizes) forward passes, and
    has no data-dependent control flow (it runs under vmap). The authors' released code has no HF solver
    (aravindr93/imaml_dev, implicit_maml/learner_model.py: `assert inner_alg == 'gradient' # sqp unsupported in
    this version`), so the number of Newton steps and the step-size grid are this project's choices.

    Fields beyond `InnerLoop`'s:

    Args:
        lam: proximal strength lambda (paper: 2.0); larger keeps phi nearer theta; 0 at evaluation is plain
            fine-tuning (the authors' test script).
        solver: "gd": `steps` steps of `optimizer` at `lr` ("iMAML, GD"); "hf": `steps` Newton-CG steps
            (`lr` unused, `optimizer` must stay "sgd").
        hf_cg_steps: conjugate-gradient steps per Newton step (paper: 5).
        hf_step_sizes: the line search's candidate step sizes along the Newton direction (1 is the full step).
    """

    lam: float = 2.0
    solver: str = "gd"
    hf_cg_steps: int = 5
    hf_step_sizes: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.1, 0.03, 0.01])

    def __post_init__(self) -> None:
        # A list (not a tuple) so that the saved hyperparameters equal the config's; config lists arrive as ListConfig.
        object.__setattr__(self, "hf_step_sizes", [float(t) for t in self.hf_step_sizes])

    def check(self, where: str) -> ProximalLoop:
        problems = {
            "lam": (not self.lam >= 0, "0 or more (the paper uses 2.0)"),
            "solver": (self.solver not in SOLVERS, " or ".join(SOLVERS)),
            "hf_cg_steps": (self.hf_cg_steps < 1 or int(self.hf_cg_steps) != self.hf_cg_steps, "an integer >= 1"),
            "hf_step_sizes": (not self.hf_step_sizes or min(self.hf_step_sizes) <= 0, "a list of step sizes > 0"),
            "optimizer": (self.solver == "hf" and self.optimizer != "sgd", "sgd: solver=hf takes Newton steps"),
        }
        for name, (bad, hint) in problems.items():
            if bad:
                raise ConfigError(f"algorithm.{where}.{name}={getattr(self, name)!r}; use {hint}")
        return super().check(where)


# The paper's Omniglot 5-way 1-shot setting ("iMAML, GD"): 16 SGD steps at 0.1 with lambda 2, in training and
# evaluation. `solver=hf` turns it into the Hessian-free variant.
IMAML_INNER = ProximalLoop(steps=16, lr=0.1, lam=2.0)


class IMAML(MetaLearner):
    """iMAML: the inner loop minimises L_support(phi) + lam/2 ||phi - theta||^2 from phi = theta. At the
    minimiser, d phi / d theta = (I + H / lam)^-1 with H the Hessian of L_support at phi, so the meta-gradient
    is the solution v of (I + H / lam) v = grad_phi L_query(phi), found by `cg_steps` conjugate-gradient steps
    on Hessian-vector products (forward-over-reverse, `jvp` of `grad`). Only phi enters: the inner trajectory
    is never kept, so memory does not grow with `inner.steps`. The solve is exact at an exact minimiser; more
    inner steps, or the Hessian-free solver (`inner.solver=hf`, see `ProximalLoop`), get closer to one.

    Beyond `MetaLearner`'s arguments:

    Args:
        inner, eval_inner: `ProximalLoop`s (their `lam` is the proximal strength; training needs lam > 0).
        cg_steps: conjugate-gradient steps per task (paper: 5).
        cg_damping: added to the diagonal of I + H / lam; guards against negative curvature (non-convex loss).

    References:
        Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients. NeurIPS 2019.
    """

    mixed_precision = False
    mixed_precision_note = (
        "forward-over-reverse Hessian-vector products fail under autocast with convolutions, and conjugate "
        "gradient amplifies half-precision error in them"
    )

    def __init__(
        self,
        backbone: nn.Module,
        *,
        inner: ProximalLoop = IMAML_INNER,
        eval_inner: ProximalLoop = IMAML_INNER,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, inner=inner, eval_inner=eval_inner, **kwargs)
        if self.inner.lam <= 0:
            raise ConfigError(f"algorithm.inner.lam={self.inner.lam}; it must be positive (the paper uses 2.0)")
        if cg_steps < 1 or cg_damping < 0:
            raise ConfigError("algorithm.cg_steps must be at least 1 and algorithm.cg_damping 0 or more")
        self.cg_steps, self.cg_damping = cg_steps, cg_damping

    def inner_trajectory(self, params: Params, support_x: Tensor, support_y: Tensor, loop: ProximalLoop, state=None):
        """The base class's optimizer steps for solver="gd"; for "hf", `loop.steps` Newton-CG steps on the inner
        objective, each on support batch `loop.batch(step, ...)` (the state passes through unchanged)."""
        if loop.solver == "gd":
            return super().inner_trajectory(params, support_x, support_y, loop, state)
        fast = {k: v for k, v in params.items() if self.adapts(k)}
        for step in range(loop.steps):
            x, y = loop.batch(step, support_x, support_y)
            objective = lambda f, x=x, y=y: self.inner_objective({**params, **f}, params, x, y, loop)
            fast = newton_cg_step(objective, fast, loop.hf_cg_steps, loop.hf_step_sizes)
        return {**params, **fast}, state

    def vmap_examples(self, batch: Episode) -> int:
        """The support set's size: `inner.steps` steps and `cg_steps` Hessian-vector products pass through it, the
        query set once, so `batching=auto` chooses vmap or the loop by it (`task_gradients` splits where the query
        sets are large; docs/performance.md)."""
        return batch.support_x.shape[1]

    def inner_objective(self, phi: Params, theta: Params, x: Tensor, y: Tensor, loop: ProximalLoop) -> Tensor:
        """The support loss plus the proximal term lam/2 ||phi - theta||^2 that anchors phi to theta (the base
        inner loop minimises it from phi = theta)."""
        return self.loss(phi, x, y)[0] + 0.5 * loop.lam * squared_distance(phi, theta)

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict[str, Tensor]]:
        phi = detach(self.inner_loop(params, episode.support_x, episode.support_y, self.inner))
        query_grad, metrics = self.scaled_grad(self.query_objective, has_aux=True)(phi, episode)
        return self.implicit_gradient(phi, query_grad, episode.support_x, episode.support_y), metrics

    def implicit_gradient(self, phi: Params, query_grad: Params, support_x: Tensor, support_y: Tensor) -> Params:
        """The solution v of (I + H / lam) v = query_grad by `cg_steps` conjugate-gradient steps, H the Hessian of
        the support loss at phi (one task)."""
        support_grad = self.scaled_grad(lambda p: self.loss(p, support_x, support_y)[0])
        hvp = lambda v: jvp(support_grad, (phi,), (v,))[1]  # H v at phi, forward-over-reverse
        matvec = lambda v: axpy(1.0 / self.inner.lam, hvp(v), v)  # (I + H / lam) v
        return conjugate_gradient(matvec, query_grad, self.cg_steps, self.cg_damping)

    def splits_inner(self) -> bool:
        """iMAML's own meta-gradient: phi enters it without a graph, so `task_gradients` runs it in three parts
        that call the same hooks (a learner that overrides `meta_gradient` runs it per task instead)."""
        return not overridden(self, IMAML, ("meta_gradient",))

    def task_gradients(self, params: Params, batch: Episode) -> tuple[Params, dict[str, Tensor]]:
        """As `meta_gradient` per task. On the "split" path (`batching=auto` on CPU with small support sets and
        large query sets) the inner loops run in one vmap, each task's query gradient one task at a time, then
        the conjugate-gradient solves (all on the support sets) in one vmap: the tasks' large query graphs are
        never held together (docs/performance.md)."""
        if self.batching_path(batch) != "split":
            return super().task_gradients(params, batch)
        phi = self.adapted_per_task(params, batch)
        query_grads, metrics = self.query_gradients_per_task(phi, batch)
        solve = vmap(self.implicit_gradient, chunk_size=self.chunk_size)
        return solve(phi, query_grads, *batch[:2]), metrics
