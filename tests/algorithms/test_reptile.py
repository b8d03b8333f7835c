"""Reptile against an independent computation: a deep-copied model trained by `torch.optim`, in float64."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_meta.algorithms import Reptile
from lightning_meta.data import ClassificationTasks, Episode, EpisodicDataModule, sample_episode
from lightning_meta.models import MLP, Conv4

WAYS, SHOTS = 3, 3  # 9 support examples: inner mini-batches of 4 wrap around the support set


def reference_phi(model: nn.Module, x, y, optimizer: str, lr: float, steps: int, batch: int | None, loss_fn):
    """phi_k by plain PyTorch: `steps` optimizer steps on consecutive support slices, wrapping around."""
    model = copy.deepcopy(model)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = len(y)
    for step in range(steps):
        idx = [(step * batch + j) % n for j in range(batch)] if batch else list(range(n))
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    return {name: p.detach() for name, p in model.named_parameters()}


def _conv_task_batch(tasks: int = 3) -> Episode:
    g = torch.Generator().manual_seed(0)
    y = torch.stack([torch.randperm(WAYS * SHOTS, generator=g) % WAYS for _ in range(tasks)])
    x = torch.rand(tasks, WAYS * SHOTS, 1, 16, 16, generator=g, dtype=torch.float64)
    return Episode(x, y, x[:, :4], y[:, :4])


def _sine_task_batch(tasks: int = 3) -> Episode:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(tasks, 7, 1, generator=g, dtype=torch.float64) * 10 - 5
    return Episode(x, torch.sin(x), x[:, :3], torch.sin(x[:, :3]))


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.01)])
def test_meta_gradient_is_theta_minus_phi_conv4(batching, optimizer, lr):
    torch.manual_seed(0)
    backbone = Conv4(out_features=WAYS, hidden=4, image_size=16).double()
    learner = Reptile(backbone, inner_lr=lr, inner_steps=5, inner_optimizer=optimizer, inner_batch_size=4,
                      batching=batching)  # fmt: skip
    batch = _conv_task_batch()
    grads, metrics = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    # A conv bias before batch norm has gradient exactly 0; Adam scales its round-off up to ~1e-9 steps.
    atol = 1e-8 if optimizer == "adam" else 1e-10
    for t in range(3):
        phi = reference_phi(backbone, batch.support_x[t], batch.support_y[t], optimizer, lr, 5, 4, F.cross_entropy)
        moved = 0.0
        for name, p in backbone.named_parameters():
            expected = p.detach() - phi[name]
            moved = max(moved, float(expected.abs().max()))
            torch.testing.assert_close(grads[name][t], expected, rtol=1e-9, atol=atol)
        assert moved > 1e-3, "the inner loop did not move the weights"
        with torch.no_grad():
            out = torch.func.functional_call(backbone, phi, (batch.query_x[t],))
        expected_loss = F.cross_entropy(out, batch.query_y[t])
        torch.testing.assert_close(metrics["query_loss"][t].double(), expected_loss, rtol=1e-6, atol=0)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_gradient_is_theta_minus_phi_mlp(batching):
    torch.manual_seed(0)
    backbone = MLP(hidden=(8, 8)).double()
    learner = Reptile(backbone, task="regression", inner_lr=0.05, inner_steps=4, inner_optimizer="sgd",
                      inner_batch_size=3, batching=batching)  # fmt: skip
    batch = _sine_task_batch()
    grads, _ = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    for t in range(3):
        phi = reference_phi(backbone, batch.support_x[t], batch.support_y[t], "sgd", 0.05, 4, 3, F.mse_loss)
        for name, p in backbone.named_parameters():
            torch.testing.assert_close(grads[name][t], p.detach() - phi[name], rtol=1e-9, atol=1e-10)


def test_adapt_uses_the_evaluation_settings():
    torch.manual_seed(0)
    backbone = Conv4(out_features=WAYS, hidden=4, image_size=16).double()
    learner = Reptile(backbone, inner_lr=0.5, inner_steps=1, eval_inner_steps=3, inner_optimizer="sgd",
                      eval_inner_lr=0.05, inner_batch_size=4, eval_inner_batch_size=None)  # fmt: skip
    batch = _conv_task_batch(1)
    theta = {k: v.clone() for k, v in learner.params().items()}
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    phi = reference_phi(backbone, batch.support_x[0], batch.support_y[0], "sgd", 0.05, 3, None, F.cross_entropy)
    for name in phi:
        torch.testing.assert_close(predictor.params[name], phi[name], rtol=1e-9, atol=1e-10)
        assert torch.equal(learner.params()[name], theta[name]), "adapt must leave the meta-weights alone"


class _RandomImages(EpisodicDataModule):
    def build_sources(self):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (60, 16, 16), dtype=torch.uint8, generator=g)
        return {"train": ClassificationTasks(images, list(torch.arange(60).view(6, 10)), self.ways)}


class _Recorder(pl.Callback):
    """Keeps each training batch, the lr in force for it, and the logged train/lr."""

    def __init__(self) -> None:
        self.batches, self.lrs, self.logged = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, *args):
        self.logged.append(float(trainer.callback_metrics["train/lr"]))


def _fit(learner: Reptile, max_steps: int, meta_batch_size: int = 2) -> tuple[pl.Trainer, _Recorder, _RandomImages]:
    dm = _RandomImages(ways=WAYS, shots=1, queries=1, train_shots=SHOTS, meta_batch_size=meta_batch_size,
                       val_episodes=0, seed=3)  # fmt: skip
    recorder = _Recorder()
    trainer = pl.Trainer(
        max_steps=max_steps, precision="64-true", accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        inference_mode=False,
        use_distributed_sampler=False, callbacks=[recorder], limit_val_batches=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(learner, datamodule=dm)
    return trainer, recorder, dm


def test_one_fit_step_moves_theta_by_lr_times_mean_difference():
    torch.manual_seed(0)
    backbone = Conv4(out_features=WAYS, hidden=4, image_size=16)
    learner = Reptile(backbone, inner_lr=0.01, inner_steps=3, inner_batch_size=4, lr=0.7, lr_final=0.0)
    theta = copy.deepcopy(backbone).double()
    trainer, recorder, dm = _fit(learner, max_steps=1)
    assert trainer.global_step == 1 and len(recorder.batches) == 1
    batch = recorder.batches[0]
    for t in range(2):  # the batch is tasks 0 and 1 of the training stream
        ep = sample_episode(dm.sources["train"], 3, "train", t, SHOTS, 1)
        assert torch.equal(batch.support_x[t], ep.support_x.double())
    phis = [
        reference_phi(theta, batch.support_x[t], batch.support_y[t], "adam", 0.01, 3, 4, F.cross_entropy)
        for t in range(2)
    ]  # fmt: skip
    for name, p in theta.named_parameters():
        mean_phi = (phis[0][name] + phis[1][name]) / 2
        expected = p.detach() - 0.7 * (p.detach() - mean_phi)
        # Adam turns the round-off gradient of a conv bias before batch norm (exactly 0) into ~1e-9 steps.
        torch.testing.assert_close(dict(learner.backbone.named_parameters())[name].detach(), expected,
                                   rtol=1e-8, atol=1e-9)  # fmt: skip


def test_outer_lr_anneals_linearly():
    torch.manual_seed(0)
    learner = Reptile(Conv4(out_features=WAYS, hidden=4, image_size=16), inner_steps=1, lr=1.0, lr_final=0.2)
    trainer, recorder, _ = _fit(learner, max_steps=4)
    expected = [1.0 + (0.2 - 1.0) * s / 4 for s in range(4)]  # lr in force at step s of 4
    assert recorder.lrs == pytest.approx(expected)
    assert recorder.logged == pytest.approx(expected), "train/lr must report the lr that step used"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)
