"""The "write your own algorithm" example: ANIL adapts only the head, meta-learns everything, and is
selectable from the command line by its `_target_`."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_meta.build import build
from lightning_meta.config import load_config
from lightning_meta.run import train


@pytest.mark.parametrize("loop", [dict(steps=2, lr=0.4), dict(steps=3, lr=0.05, batch_size=2, optimizer="adam")])
def test_inner_loop_adapts_the_head_only_with_the_configured_optimizer(anil, mlp, episode, loop):
    learner = anil(mlp, inner=loop)
    theta = learner.params()
    fast = learner.inner_loop(theta, episode.support_x, episode.support_y)
    # The reference: the same optimizer on the head alone, body frozen, the same mini-batches.
    body = {k: v for k, v in theta.items() if not k.startswith("head.")}
    head = {k: v.clone().requires_grad_() for k, v in theta.items() if k.startswith("head.")}
    make = torch.optim.Adam if loop.get("optimizer") == "adam" else torch.optim.SGD
    opt = make(head.values(), lr=loop["lr"], **({"betas": (0.0, 0.999)} if make is torch.optim.Adam else {}))
    n, size = len(episode.support_y), loop.get("batch_size") or len(episode.support_y)
    for step in range(loop["steps"]):
        idx = [(step * size + j) % n for j in range(size)]
        opt.zero_grad()
        out = functional_call(mlp, {**body, **head}, (episode.support_x[idx],))
        F.cross_entropy(out, episode.support_y[idx]).backward()
        opt.step()
    for name, value in head.items():
        torch.testing.assert_close(fast[name], value.detach(), rtol=1e-9, atol=1e-12)
    assert set(fast) == set(theta)
    for name in theta:
        if name.startswith("head."):
            assert (fast[name] - theta[name]).abs().max() > 1e-3
        else:
            assert torch.equal(fast[name], theta[name])


def test_meta_gradient_reaches_the_body_through_the_adapted_head(anil, mlp, episode):
    """Equals plain autograd through two written-out head-only SGD steps, body gradient included."""
    learner = anil(mlp, inner=dict(lr=0.4, steps=2))
    meta_grad, _ = learner.meta_gradient(learner.params(), episode)
    theta = {k: v.detach().clone().requires_grad_() for k, v in learner.params().items()}
    fast = dict(theta)
    for _ in range(2):
        loss = F.cross_entropy(functional_call(mlp, fast, (episode.support_x,)), episode.support_y)
        heads = [k for k in fast if k.startswith("head.")]
        grads = torch.autograd.grad(loss, [fast[k] for k in heads], create_graph=True)
        fast.update({k: fast[k] - 0.4 * g for k, g in zip(heads, grads, strict=True)})
    query_loss = F.cross_entropy(functional_call(mlp, fast, (episode.query_x,)), episode.query_y)
    expected = dict(zip(theta, torch.autograd.grad(query_loss, list(theta.values())), strict=True))
    for name in theta:
        torch.testing.assert_close(meta_grad[name], expected[name], rtol=1e-9, atol=1e-12)
    assert all(meta_grad[k].abs().max() > 1e-4 for k in theta if not k.startswith("head."))


def test_a_backbone_without_a_head_is_refused(anil, episode):
    with pytest.raises(ValueError, match=r"ANIL adapts the parameters named head\.\*"):
        anil(torch.nn.Sequential(torch.nn.Linear(4, 3)).double())


def test_selected_by_target_from_the_command_line_and_trains_the_body(anil, tmp_path):
    cfg = load_config([
        "experiment=maml_sinusoid", "algorithm._target_=examples.anil.ANIL", "model.hidden=[8]",
        "trainer.max_steps=3", "data.meta_batch_size=2", "data.val_episodes=0", "data.test_episodes=2",
        "data.eval_batch_size=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "algorithm.outer.lr=0.01", f"output_dir={tmp_path}",
    ])  # fmt: skip
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does, to rebuild the initial weights
    _, initial = build(cfg)
    assert type(initial) is anil
    start = {k: v.clone() for k, v in initial.backbone.state_dict().items()}
    metrics = train(cfg)
    assert set(metrics) >= {"test/mse"}
    trained = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in start.items():
        assert (trained[f"backbone.{name}"] - value).abs().max() > 1e-4, name
