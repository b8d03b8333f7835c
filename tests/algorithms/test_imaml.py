"""iMAML: conjugate gradient, the implicit meta-gradient against an explicit Hessian solve, its limits, and
finite differences through a converged inner loop."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from lightning_meta.algorithms import IMAML, MAML
from lightning_meta.algorithms.functional import conjugate_gradient


def flat(params: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflat(vector: torch.Tensor, like: dict) -> dict:
    out, start = {}, 0
    for k, v in like.items():
        out[k] = vector[start : start + v.numel()].reshape(v.shape)
        start += v.numel()
    return out


def spd_system(seed: int = 0):
    """A 6x6 SPD matrix acting on a dict of a (2, 2) and a (2,) tensor, and a right-hand side."""
    g = torch.Generator().manual_seed(seed)
    b_mat = torch.randn(6, 6, generator=g, dtype=torch.float64)
    matrix = b_mat @ b_mat.T + 0.5 * torch.eye(6, dtype=torch.float64)
    like = {"w": torch.zeros(2, 2, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    matvec = lambda v: unflat(matrix @ flat(v), like)
    rhs = unflat(torch.randn(6, generator=g, dtype=torch.float64), like)
    return matrix, matvec, rhs


@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_conjugate_gradient_solves_an_spd_system_in_n_steps(damping):
    matrix, matvec, rhs = spd_system()
    expected = torch.linalg.solve(matrix + damping * torch.eye(6, dtype=torch.float64), flat(rhs))
    torch.testing.assert_close(flat(conjugate_gradient(matvec, rhs, 6, damping)), expected, rtol=1e-9, atol=1e-10)
    # fewer steps than dimensions leave a residual; more steps keep the solution (no 0/0 once solved)
    assert (flat(conjugate_gradient(matvec, rhs, 3, damping)) - expected).norm() > 1e-3 * expected.norm()
    torch.testing.assert_close(flat(conjugate_gradient(matvec, rhs, 12, damping)), expected, rtol=1e-9, atol=1e-10)


def test_conjugate_gradient_runs_inside_vmap():
    matrix, matvec, rhs = spd_system()
    rhs_batch = {k: torch.stack([v, 2 * v + 1]) for k, v in rhs.items()}
    batched = vmap(lambda b: conjugate_gradient(matvec, b, 6))(rhs_batch)
    for i in range(2):
        single = conjugate_gradient(matvec, {k: v[i] for k, v in rhs_batch.items()}, 6)
        torch.testing.assert_close(flat({k: v[i] for k, v in batched.items()}), flat(single))


def exact_implicit_gradient(learner: IMAML, episode, damping: float = 0.0) -> torch.Tensor:
    """(I (1 + damping) + H / lam)^-1 grad L_query(phi), with H from `torch.autograd.functional.hessian`."""
    theta = learner.params()
    phi = {k: v.detach() for k, v in learner.inner_loop(theta, episode.support_x, episode.support_y).items()}
    support = lambda vec: learner.loss(unflat(vec, phi), episode.support_x, episode.support_y)[0]
    hessian = torch.autograd.functional.hessian(support, flat(phi))
    system = (1 + damping) * torch.eye(len(hessian), dtype=hessian.dtype) + hessian / learner.inner.lam
    assert torch.linalg.eigvalsh(system).min() > 0.1  # the test problem is well posed
    query = grad(lambda p: learner.loss(p, episode.query_x, episode.query_y)[0])(phi)
    return torch.linalg.solve(system, flat(query))


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_meta_gradient_equals_explicit_hessian_solve(mlp, episode, damping):
    n = sum(p.numel() for p in mlp.parameters())
    learner = IMAML(mlp, inner=dict(lam=2.0, steps=16, lr=0.1), cg_steps=2 * n, cg_damping=damping)
    meta_grad, metrics = learner.meta_gradient(learner.params(), episode)
    torch.testing.assert_close(
        flat(meta_grad), exact_implicit_gradient(learner, episode, damping), rtol=1e-7, atol=1e-9
    )
    phi = learner.inner_loop(learner.params(), episode.support_x, episode.support_y)
    torch.testing.assert_close(metrics["query_loss"], learner.loss(phi, episode.query_x, episode.query_y)[0])


def test_meta_gradient_tends_to_query_gradient_at_theta_as_lam_grows(mlp, episode):
    theta_grad = flat(grad(lambda p: IMAML(mlp).loss(p, episode.query_x, episode.query_y)[0])(IMAML(mlp).params()))
    errors = []
    for lam in (1e1, 1e3, 1e5):
        learner = IMAML(mlp, inner=dict(lam=lam, lr=0.5 / lam, steps=16), cg_steps=5)  # lr * lam < 2: stable
        meta_grad, _ = learner.meta_gradient(learner.params(), episode)
        errors.append(float((flat(meta_grad) - theta_grad).norm() / theta_grad.norm()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4


def test_meta_gradient_matches_finite_differences_through_a_converged_inner_loop(linear_task):
    """Linear regression: the inner problem is strongly convex, 60 steps reach its minimiser, and the implicit
    gradient is then the exact derivative of L_query(phi*(theta))."""
    model, episode = linear_task
    learner = IMAML(model, task="regression", inner=dict(lam=1.0, lr=0.35, steps=60), cg_steps=4)
    theta = learner.params()
    meta_grad, _ = learner.meta_gradient(theta, episode)

    def objective(params):
        fast = learner.inner_loop(params, episode.support_x, episode.support_y)
        return learner.loss(fast, episode.query_x, episode.query_y)[0]

    eps = 1e-6
    for k in theta:  # every coordinate
        for i in range(theta[k].numel()):
            e = torch.zeros(theta[k].numel(), dtype=theta[k].dtype)
            e[i] = eps
            shifted = lambda s, k=k, e=e: objective({**theta, k: theta[k] + s * e.view_as(theta[k])})
            numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
            torch.testing.assert_close(meta_grad[k].reshape(-1)[i], numeric, rtol=1e-6, atol=1e-9)


def test_no_inner_trajectory_is_kept(mlp, episode):
    """phi is detached before the solve: a theta that requires grad leaves no graph in the meta-gradient."""
    learner = IMAML(mlp, inner=dict(steps=4))
    params = {k: v.clone().requires_grad_() for k, v in learner.params().items()}
    meta_grad, _ = learner.meta_gradient(params, episode)
    assert not any(g.requires_grad for g in meta_grad.values())


def test_inner_loop_is_proximal_in_training_and_follows_the_evaluation_lam(linear_task):
    model, episode = linear_task
    learner = IMAML(model, task="regression", inner=dict(lam=2.0, lr=0.35, steps=100),
                    eval_inner=dict(lam=0.0, lr=0.35, steps=5))  # fmt: skip
    theta = learner.params()
    phi = learner.inner_loop(theta, episode.support_x, episode.support_y)
    stationarity = grad(lambda p: learner.loss(p, episode.support_x, episode.support_y)[0])(phi)
    for k in phi:  # grad L_support(phi*) + lam (phi* - theta) = 0 at the minimiser
        residual = stationarity[k] + 2.0 * (phi[k] - theta[k])
        torch.testing.assert_close(residual, torch.zeros_like(residual), atol=1e-10, rtol=0)
    plain = MAML(model, task="regression", inner=dict(lr=0.35, steps=5))
    plain = plain.inner_loop(theta, episode.support_x, episode.support_y)
    adapted = learner.inner_loop(theta, episode.support_x, episode.support_y, learner.eval_inner)
    for k in phi:  # lam = 0 at evaluation is plain fine-tuning with the evaluation settings
        torch.testing.assert_close(adapted[k], plain[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(inner=dict(lam=0.0)), "algorithm.inner.lam=0.0; it must be positive"),
        (dict(eval_inner=dict(lam=-1.0)), "algorithm.eval_inner.lam=-1.0; use 0 or more"),
        (dict(cg_steps=0), "algorithm.cg_steps must be"),
    ],
)
def test_invalid_settings_name_the_fix(mlp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        IMAML(mlp, **kwargs)
