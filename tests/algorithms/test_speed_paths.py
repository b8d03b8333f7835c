"""`algorithm.batching=auto` (the default) and the loop path's preallocated stack: `auto` picks vmap for small
per-task batches and the loop for large ones, deterministically from the batch's shapes, and every path gives the
per-task results (float64, batch norm, outer gradient inside the per-task function)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.func import grad, vmap
from torch.utils._pytree import tree_leaves

from lightning_meta.algorithms import FOMAML, IMAML, MAML, MetaLearner, MetaSGD, Reptile
from lightning_meta.algorithms.batching import AUTO_VMAP_MAX_EXAMPLES, map_tasks, resolve
from lightning_meta.data.episode import Episode


def _shaped(support: int, query: int, device: str = "cpu") -> Episode:
    x = lambda n: torch.empty(2, n, 1, 8, 8, device=device)
    y = lambda n: torch.empty(2, n, dtype=torch.long, device=device)
    return Episode(x(support), y(support), x(query), y(query))


def test_auto_is_the_default_and_resolves_by_per_task_batch_size():
    import inspect

    assert inspect.signature(MetaLearner.__init__).parameters["batching"].default == "auto"
    small, large = _shaped(5, AUTO_VMAP_MAX_EXAMPLES), _shaped(5, AUTO_VMAP_MAX_EXAMPLES + 1)
    assert resolve("auto", small) == "vmap" and resolve("auto", large) == "loop"
    assert resolve("auto", _shaped(AUTO_VMAP_MAX_EXAMPLES + 1, 5)) == "loop"  # large support sets too
    assert resolve("auto", small, low_precision=True) == "loop"  # vmap + batch norm fails under autocast
    assert resolve("auto", _shaped(5, 75, device="meta")) == "vmap"  # accelerators: always vmap
    # a learner whose inner loop keeps no graph (FOMAML) splits: inner loops vmapped, queries one task at a time
    assert resolve("auto", large, split=True) == "split"
    assert resolve("auto", _shaped(AUTO_VMAP_MAX_EXAMPLES + 1, 30), split=True) == "loop"  # large support sets
    assert resolve("auto", large, low_precision=True, split=True) == "loop"
    for fixed in ("vmap", "loop"):
        assert resolve(fixed, small) == resolve(fixed, large) == fixed


def test_unknown_batching_is_refused(conv):
    with pytest.raises(ValueError, match=r"algorithm\.batching='grouped'; choose one of vmap, loop, auto"):
        FOMAML(conv, batching="grouped")


def test_loop_stack_equals_torch_stack_bitwise(make_episode):
    batch = make_episode(1, tasks=3)
    fn = lambda p, e: ({"a": e.support_x.sum(0) * p["w"]}, {"m": e.query_y.double().mean(), "t": ()})
    params = {"w": torch.tensor(2.0, dtype=torch.float64)}
    out = map_tasks(fn, params, batch, "loop")
    outs = [fn(params, Episode(*(f[t] for f in batch))) for t in range(3)]
    assert torch.equal(out[0]["a"], torch.stack([o[0]["a"] for o in outs]))
    assert torch.equal(out[1]["m"], torch.stack([o[1]["m"] for o in outs])) and out[1]["t"] == ()


@pytest.mark.parametrize("queries", [1, AUTO_VMAP_MAX_EXAMPLES])  # auto -> vmap, auto -> loop (3-way: 3q images)
@pytest.mark.parametrize("cls", [FOMAML, MAML, Reptile])
def test_auto_equals_vmap_and_loop_in_float64_with_batch_norm(cls, queries, conv, make_episode):
    kwargs = dict(inner=dict(steps=2, lr=0.1, optimizer="sgd"), inner_state="fresh") if cls is Reptile else {}
    batch = make_episode(2, x_shape=(1, 8, 8), queries=queries, tasks=3)
    expected = cls(conv, **kwargs).batching_path(batch)
    # FOMAML, MAML: inner loops vmapped apart from the queries; Reptile decides by its inner steps' 6 support
    # images, since its queries only feed the log
    large = "split" if cls in (FOMAML, MAML) else "vmap"
    assert expected == ("vmap" if 3 * queries <= AUTO_VMAP_MAX_EXAMPLES else large)
    results = {}
    for batching in ("auto", "vmap", "loop"):
        learner = cls(conv, batching=batching, **kwargs)
        results[batching] = learner.task_gradients(learner.params(), batch)
    for other in ("vmap", "loop"):
        for k, g in results["auto"][0].items():
            torch.testing.assert_close(g, results[other][0][k], rtol=1e-7, atol=1e-12)
    if expected == "split" and cls is MAML:  # deterministic: the same path again, bit for bit
        learner = cls(conv, **kwargs)
        results["split"] = learner.task_gradients(learner.params(), batch)
    if expected == "split" and cls is FOMAML:  # by hand: vmapped inner loops, then each task's query gradient
        learner = cls(conv, **kwargs)
        theta = learner.params()
        adapt = lambda p, x, y: {k: v.detach() for k, v in learner.inner_loop(p, x, y).items()}
        fast = vmap(adapt, in_dims=(None, 0, 0))(theta, batch.support_x, batch.support_y)
        tasks = [Episode(*(f[t] for f in batch)) for t in range(3)]
        grads = [grad(lambda p, e=e: learner.query_objective(p, e)[0])({k: v[t] for k, v in fast.items()})
                 for t, e in enumerate(tasks)]  # fmt: skip
        results["split"] = ({k: torch.stack([g[k] for g in grads]) for k in theta},)
    # auto is the path it resolves to, bit for bit (a resumed run takes the same path: nothing to save)
    assert all(torch.equal(g, results[expected][0][k]) for k, g in results["auto"][0].items())


def test_auto_takes_the_loop_under_mixed_precision(conv, make_episode):
    learner = FOMAML(conv)
    learner._trainer = SimpleNamespace(precision="bf16-mixed")
    seen = []
    learner.map_tasks(lambda p, e: seen.append(e.support_x.dim()) or {"x": e.query_y}, learner.params(),
                      make_episode(0, x_shape=(1, 8, 8), tasks=2))  # fmt: skip
    assert seen == [4, 4]  # called once per task with unbatched tensors: the loop


@pytest.mark.parametrize("cls, support, queries, path", [
    (FOMAML, 5, AUTO_VMAP_MAX_EXAMPLES + 1, "loop"),  # support and query pass about equally often: the larger
    (IMAML, 5, AUTO_VMAP_MAX_EXAMPLES + 1, "vmap"),  # iMAML: inner steps and CG on the support set, query once
    (IMAML, AUTO_VMAP_MAX_EXAMPLES + 1, 5, "loop"),
])  # fmt: skip
def test_auto_decides_by_the_learners_vmap_examples(cls, support, queries, path, conv):
    learner, batch, seen = cls(conv), _shaped(support, queries), []
    learner.map_tasks(lambda p, e: seen.append(e.support_x.dim()) or {"x": e.query_y}, learner.params(), batch)
    assert len(seen) == (1 if path == "vmap" else 2)  # vmap traces the function once; the loop calls it per task


def test_reptile_decides_by_its_inner_mini_batch(conv):
    """Reptile's inner steps pass `inner.batch_size` examples (eval_inner's in evaluation) and its queries only
    feed the log: 50 support images in mini-batches of 10 vmap in training, the whole 50 per step at evaluation
    take the loop, and so does a training loop without mini-batches."""
    batch = _shaped(50, AUTO_VMAP_MAX_EXAMPLES + 5)
    learner = Reptile(conv, inner=dict(steps=5, lr=1e-3, batch_size=10, optimizer="adam"))
    assert learner.vmap_examples(batch) == 10 and learner.batching_path(batch) == "vmap"
    learner.eval()
    assert learner.vmap_examples(batch) == 50 and learner.batching_path(batch) == "loop"
    whole = Reptile(conv, inner=dict(steps=5, lr=1e-3, batch_size=None, optimizer="adam"))
    assert whole.batching_path(batch) == "loop"
    assert Reptile(conv).batching_path(_shaped(5, 5)) == "vmap"  # mini-batches larger than the support set


@pytest.mark.parametrize("scale", [1.0, 2.0**10])
def test_autograd_outside_transforms_equals_torch_func_grad(mlp, episode, scale):
    """Outside any transform `scaled_grad` takes `torch.autograd.grad`: the same gradient and aux as
    `torch.func.grad`, and, inside an enclosing autograd graph, a differentiable one (second order)."""
    from torch.func import grad

    from lightning_meta.algorithms.scaling import scaled_grad

    learner = MAML(mlp, inner={"lr": 0.3, "steps": 2})
    loss = lambda p, x, y: (learner.loss(p, x, y)[0], {"n": torch.tensor(1.0)})
    theta = learner.params()
    got, aux = scaled_grad(loss, scale, has_aux=True)(theta, episode.support_x, episode.support_y)
    want, _ = grad(loss, has_aux=True)(theta, episode.support_x, episode.support_y)
    assert aux == {"n": torch.tensor(1.0)} and not any(g.requires_grad for g in got.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-15)
    # MAML's meta-gradient one task at a time (autograd, second order) equals the one inside vmap (torch.func).
    batch = Episode(*(f[None] for f in episode))
    looped = MAML(mlp, inner={"lr": 0.3, "steps": 2}, batching="loop").map_tasks(learner.meta_gradient, theta, batch)
    vmapped = MAML(mlp, inner={"lr": 0.3, "steps": 2}, batching="vmap").map_tasks(learner.meta_gradient, theta, batch)
    for k in theta:
        torch.testing.assert_close(looped[0][k], vmapped[0][k], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_foreach_inner_step_equals_the_per_tensor_step_bitwise(optimizer, monkeypatch):
    """Outside transforms, with nothing to differentiate, the inner optimizers take the `torch._foreach_*` path:
    the same numbers bit for bit as the per-tensor form (which MAML's graph and vmap take)."""
    from lightning_meta.algorithms.inner import OPTIMIZERS

    gen = torch.Generator().manual_seed(0)
    fast = {k: torch.randn(s, generator=gen) for k, s in [("w", (8, 4, 3, 3)), ("b", (8,)), ("s", ())]}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in fast.items()}
    opt = OPTIMIZERS[optimizer]()
    state = opt.init(fast)
    if optimizer == "adam":  # a state some steps in, with second moments of all sizes
        state = (state[0] + 3, {k: torch.rand(v.shape, generator=gen) for k, v in fast.items()})
    calls, last = [], {"adam": "_foreach_addcdiv", "sgd": "_foreach_sub"}[optimizer]  # each step's final pass
    original = getattr(torch, last)
    monkeypatch.setattr(torch, last, lambda *a: calls.append(1) or original(*a))
    got, got_state = opt.step(fast, grads, state, 1e-2)
    assert calls == [1]  # the multi-tensor path ran
    want, want_state = opt.step({k: v.requires_grad_() for k, v in dict(fast).items()}, grads, state, 1e-2)
    assert calls == [1]  # and the per-tensor one for a graph
    assert all(torch.equal(got[k], want[k].detach()) for k in fast)
    for a, b in zip(tree_leaves(got_state), tree_leaves(want_state), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("graph", [False, True], ids=["multi-tensor", "per-tensor"])
def test_inner_adam_equals_torch_optim_adam_bitwise(graph):
    """The inner Adam is `torch.optim.Adam(betas=(0, 0.999))` bit for bit in float32, over steps whose gradients
    span five orders of magnitude, on tensors with and without a SIMD remainder, on either path."""
    from lightning_meta.algorithms.inner import Adam

    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (8, 4, 3, 3), "b": (37,), "s": ()}
    fast = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    reference = [v.clone().requires_grad_() for v in fast.values()]
    torch_adam = torch.optim.Adam(reference, lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
    opt = Adam()
    state = opt.init(fast)
    for _ in range(12):
        scale = 10.0 ** torch.randint(-4, 2, (), generator=gen).item()
        grads = {k: torch.randn(v.shape, generator=gen) * scale for k, v in fast.items()}
        for p, g in zip(reference, grads.values(), strict=True):
            p.grad = g.clone()
        torch_adam.step()
        inputs = {k: v.detach().requires_grad_(graph) for k, v in fast.items()}
        fast, state = opt.step(inputs, grads, state, 1e-3)
        fast = {k: v.detach() for k, v in fast.items()}
        assert all(torch.equal(fast[k], p.detach()) for k, p in zip(fast, reference, strict=True))
    moments = [torch_adam.state[p]["exp_avg_sq"] for p in reference]
    assert all(torch.equal(v, m) for v, m in zip(state[1].values(), moments, strict=True))
    assert float(state[0]) == torch_adam.state[reference[0]]["step"] == 12


def test_a_fomaml_subclass_with_its_own_meta_gradient_is_not_split(conv):
    """The split path computes FOMAML's meta-gradient itself; a subclass that overrides `meta_gradient` keeps it."""

    class Scaled(FOMAML):
        def meta_gradient(self, params, episode):
            grads, metrics = super().meta_gradient(params, episode)
            return {k: 2 * g for k, g in grads.items()}, metrics

    batch = _shaped(5, AUTO_VMAP_MAX_EXAMPLES + 1)
    x = lambda like: torch.randn(like.shape, dtype=next(conv.parameters()).dtype)
    batch = Episode(x(batch.support_x), torch.randint(0, 3, batch.support_y.shape),
                    x(batch.query_x), torch.randint(0, 3, batch.query_y.shape))  # fmt: skip
    plain, scaled = FOMAML(conv), Scaled(conv)
    assert plain.batching_path(batch) == "split" and scaled.batching_path(batch) == "loop"
    want, got = plain.task_gradients(plain.params(), batch)[0], scaled.task_gradients(scaled.params(), batch)[0]
    for k in want:
        torch.testing.assert_close(got[k], 2 * want[k], rtol=1e-9, atol=1e-12)


def _assert_same_task_gradients(split, loop, batch: Episode) -> None:
    """Per-task meta-gradients and metrics of two learners on one batch agree to float64 round-off."""
    got, want = split.task_gradients(split.params(), batch), loop.task_gradients(loop.params(), batch)
    for k in want[0]:
        torch.testing.assert_close(got[0][k], want[0][k], rtol=1e-9, atol=1e-12)
    for k in want[1]:
        torch.testing.assert_close(got[1][k], want[1][k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("inner", [dict(steps=1, lr=0.4), dict(steps=3, lr=0.1, batch_size=4), dict(steps=0)])
def test_maml_split_path_equals_autograd_through_the_unrolled_loop(inner, conv, make_episode):
    """MAML's split path (inner iterates vmapped, query gradients per task, then g <- g - lr H_j g backwards by
    forward-over-reverse) equals autograd through the unrolled inner loop one task at a time (the loop path), in
    float64 with batch norm and inner mini-batches."""
    batch = make_episode(2, x_shape=(1, 8, 8), queries=AUTO_VMAP_MAX_EXAMPLES, tasks=3)  # 3-way: 60 queries
    split, loop = MAML(conv, inner=inner), MAML(conv, inner=inner, batching="loop")
    assert split.batching_path(batch) == "split"
    _assert_same_task_gradients(split, loop, batch)


def test_maml_subclasses_keep_the_per_task_loop(conv, make_episode):
    """The split path differentiates MAML's own SGD loop by hand; Meta-SGD's learned step sizes (and any subclass),
    or an Adam inner loop, take the per-task loop where `auto` would split MAML, bit for bit."""
    batch = make_episode(2, x_shape=(1, 8, 8), queries=AUTO_VMAP_MAX_EXAMPLES, tasks=2)
    auto, loop = MetaSGD(conv), MetaSGD(conv, batching="loop")
    got, want = auto.task_gradients(auto.params(), batch)[0], loop.task_gradients(loop.params(), batch)[0]
    assert auto.batching_path(batch) == "loop" and set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert MAML(conv).batching_path(batch) == "split"
    assert MAML(conv, inner=dict(optimizer="adam")).batching_path(batch) == "loop"


@pytest.mark.parametrize("solver", ["gd", "hf"])
def test_imaml_split_path_equals_the_per_task_meta_gradient(solver, conv, make_episode):
    """iMAML's split path (inner loops vmapped, query gradients per task, conjugate-gradient solves vmapped) equals
    its meta-gradient one task at a time, in float64 with batch norm, with either inner solver; a subclass with
    its own meta-gradient keeps the path its support size gives (vmap)."""
    batch = make_episode(2, x_shape=(1, 8, 8), queries=AUTO_VMAP_MAX_EXAMPLES, tasks=3)  # 3-way: 60 queries
    inner = dict(steps=3, lr=0.1, solver=solver, hf_cg_steps=2)
    split, loop = IMAML(conv, inner=inner, cg_steps=3), IMAML(conv, inner=inner, cg_steps=3, batching="loop")
    assert split.batching_path(batch) == "split"
    _assert_same_task_gradients(split, loop, batch)

    class Halved(IMAML):
        def meta_gradient(self, params, episode):
            grads, metrics = super().meta_gradient(params, episode)
            return {k: g / 2 for k, g in grads.items()}, metrics

    assert Halved(conv).batching_path(batch) == "vmap"
