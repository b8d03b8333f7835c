"""Reptile against an independent computation: a deep-copied model trained by `torch.optim`, in float64."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import Logger
from torch import nn

from lightning_meta.algorithms import InnerLoop, Reptile
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
    inner = InnerLoop(steps=5, lr=lr, batch_size=4, optimizer=optimizer)
    learner = Reptile(backbone, inner=inner, batching=batching, inner_state="fresh")
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
    inner = InnerLoop(steps=4, lr=0.05, batch_size=3, optimizer="sgd")
    learner = Reptile(backbone, task="regression", inner=inner, batching=batching)
    batch = _sine_task_batch()
    grads, _ = learner.map_tasks(learner.meta_gradient, learner.params(), batch)
    for t in range(3):
        phi = reference_phi(backbone, batch.support_x[t], batch.support_y[t], "sgd", 0.05, 4, 3, F.mse_loss)
        for name, p in backbone.named_parameters():
            torch.testing.assert_close(grads[name][t], p.detach() - phi[name], rtol=1e-9, atol=1e-10)


def test_adapt_uses_the_evaluation_settings():
    torch.manual_seed(0)
    backbone = Conv4(out_features=WAYS, hidden=4, image_size=16).double()
    learner = Reptile(backbone, inner=InnerLoop(steps=1, lr=0.5, batch_size=4), eval_inner=InnerLoop(steps=3, lr=0.05))
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


def _fit(
    learner: Reptile, max_steps: int, meta_batch_size: int = 2, logger=False, log_every_n_steps: int = 1
) -> tuple[pl.Trainer, _Recorder, _RandomImages]:
    dm = _RandomImages(ways=WAYS, shots=1, queries=1, train_shots=SHOTS, meta_batch_size=meta_batch_size,
                       val_episodes=0, seed=3)  # fmt: skip
    recorder = _Recorder()
    trainer = pl.Trainer(
        max_steps=max_steps, precision="64-true", accelerator="cpu", devices=1, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        inference_mode=False, use_distributed_sampler=False, callbacks=[recorder], limit_val_batches=0,
        log_every_n_steps=log_every_n_steps,
    )  # fmt: skip
    trainer.fit(learner, datamodule=dm)
    return trainer, recorder, dm


def test_one_fit_step_moves_theta_by_lr_times_mean_difference():
    torch.manual_seed(0)
    backbone = Conv4(out_features=WAYS, hidden=4, image_size=16)
    inner = InnerLoop(steps=3, lr=0.01, batch_size=4, optimizer="adam")
    learner = Reptile(backbone, inner=inner, outer=dict(lr=0.7, lr_final=0.0), inner_state="fresh")
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
    learner = Reptile(
        Conv4(out_features=WAYS, hidden=4, image_size=16), inner={"steps": 1}, outer=dict(lr=1.0, lr_final=0.2)
    )
    trainer, recorder, _ = _fit(learner, max_steps=4)
    expected = [1.0 + (0.2 - 1.0) * s / 4 for s in range(4)]  # lr in force at step s of 4
    assert recorder.lrs == pytest.approx(expected)
    assert recorder.logged == pytest.approx(expected), "train/lr must report the lr that step used"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)


class _MemoryLogger(Logger):
    """Keeps what Lightning writes: (step, metrics) rows."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append((step, dict(metrics)))


def _fit_counting_scores(mode: str, every: int) -> tuple[Reptile, list[int], dict[int, float]]:
    """(trained learner, the steps on which it scored queries, the logged train/query_loss by step)."""
    torch.manual_seed(0)
    inner = dict(steps=2, lr=0.02, batch_size=4, optimizer="adam")
    learner = Reptile(Conv4(out_features=WAYS, hidden=4, image_size=16), inner=inner, inner_state=mode)
    scored, original = [], learner.query_metrics
    learner.query_metrics = lambda *a, **k: scored.append(learner.global_step) or original(*a, **k)
    logger = _MemoryLogger()
    _fit(learner, max_steps=4, logger=logger, log_every_n_steps=every)
    logged = {step: row["train/query_loss"] for step, row in logger.rows if "train/query_loss" in row}
    return learner, sorted(set(scored)), logged


@pytest.mark.parametrize("mode", ["carried", "batched"])
def test_queries_are_scored_on_the_logged_steps_only(mode):
    """Reptile's query scores feed only the training log: with log_every_n_steps=2 they are computed on every
    second step, the logger receives the values it receives with log_every_n_steps=1 at those steps, and the
    training is the same bit for bit."""
    runs = {every: _fit_counting_scores(mode, every) for every in (1, 2)}
    assert runs[1][1] == [0, 1, 2, 3] and runs[2][1] == [1, 3]
    assert sorted(runs[1][2]) == [0, 1, 2, 3] and sorted(runs[2][2]) == [1, 3]
    assert all(runs[2][2][step] == runs[1][2][step] for step in (1, 3))
    for (name, p), q in zip(runs[1][0].named_parameters(), runs[2][0].parameters(), strict=True):
        assert torch.equal(p, q), name
    assert all(torch.equal(a, b) for a, b in zip(runs[1][0].buffers(), runs[2][0].buffers(), strict=True))


def _reference_carried(model: nn.Module, batches, eps: list[float], inner: dict, shared_start: bool):
    """supervised-reptile's meta-training, written out with one `torch.optim.Adam(betas=(0, 0.999))` state that is
    loaded into a fresh optimizer of a deep-copied model for every task and saved after it. `shared_start`: the
    batched approximation instead (every task from the same state; then the mean of the tasks' final moments).
    Returns (theta, optimizer state)."""
    model, state = copy.deepcopy(model), None
    for batch, step_size in zip(batches, eps, strict=True):
        phis, ends, start = [], [], state
        for t in range(batch.support_x.shape[0]):
            task_model = copy.deepcopy(model)
            opt = torch.optim.Adam(task_model.parameters(), lr=inner["lr"], betas=(0.0, 0.999), eps=1e-8)
            if (start if shared_start else state) is not None:  # a copy: Adam updates loaded moments in place
                opt.load_state_dict(copy.deepcopy(start if shared_start else state))
            run_inner(task_model, opt, batch.support_x[t], batch.support_y[t], inner)
            state = copy.deepcopy(opt.state_dict())
            phis.append([p.detach() for p in task_model.parameters()])
            ends.append(state)
        if shared_start:  # the state advances once, to the mean of the tasks' final second moments
            state = copy.deepcopy(ends[0])
            for i in state["state"]:
                state["state"][i]["exp_avg_sq"] = torch.stack([e["state"][i]["exp_avg_sq"] for e in ends]).mean(0)
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p += step_size * (torch.stack([phi[i] for phi in phis]).mean(0) - p)
    return model, state


def run_inner(model: nn.Module, opt, x, y, inner: dict) -> None:
    n, batch = len(y), inner["batch_size"]
    for step in range(inner["steps"]):
        idx = [(step * batch + j) % n for j in range(batch)] if batch else list(range(n))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["carried", "batched"])
def test_carried_inner_adam_equals_supervised_reptile(mode):
    """Three meta-iterations in float64 on Conv4 with batch norm, then evaluation from the trained state: the
    weights, the carried Adam state and the evaluation-adapted weights equal the sequential torch.optim reference."""
    torch.manual_seed(0)
    backbone = Conv4(out_features=WAYS, hidden=4, image_size=16)
    theta0 = copy.deepcopy(backbone).double()
    inner, eval_inner = dict(steps=3, lr=0.02, batch_size=4, optimizer="adam"), dict(steps=4, lr=0.02)
    learner = Reptile(backbone, inner=inner, eval_inner=eval_inner, outer=dict(lr=0.7, lr_final=0.0), inner_state=mode)
    trainer, recorder, dm = _fit(learner, max_steps=3, meta_batch_size=3)
    eps = [0.7 * (1 - s / 3) for s in range(3)]
    model, state = _reference_carried(theta0, recorder.batches, eps, inner, shared_start=mode == "batched")
    for (name, p), q in zip(learner.backbone.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-8, atol=1e-9, msg=name)
    t, v = learner.carried.get()
    assert float(t) == state["state"][0]["step"] == (9 if mode == "carried" else 3) * 3
    for (name, _), i in zip(learner.backbone.named_parameters(), range(len(v)), strict=True):
        torch.testing.assert_close(v[name], state["state"][i]["exp_avg_sq"], rtol=1e-8, atol=1e-20, msg=name)
    # Evaluation starts every task from the trained state and leaves it unchanged.
    episode = sample_episode(dm.sources["train"], 3, "val", 0, SHOTS, 1)
    x, y = episode.support_x.double(), episode.support_y
    predictor = learner.adapt(x, y)
    task_model = copy.deepcopy(model)
    opt = torch.optim.Adam(task_model.parameters(), lr=0.02, betas=(0.0, 0.999), eps=1e-8)
    opt.load_state_dict(state)
    run_inner(task_model, opt, x, y, dict(steps=4, batch_size=None))
    for (name, _), q in zip(learner.backbone.named_parameters(), task_model.parameters(), strict=True):
        torch.testing.assert_close(predictor.params[name], q.detach(), rtol=1e-8, atol=1e-9, msg=name)
    assert float(learner.carried.get()[0]) == float(t), "evaluation must not advance the carried state"


def test_fresh_evaluation_ignores_the_trained_state():
    torch.manual_seed(0)
    inner = dict(steps=2, lr=0.02, batch_size=4, optimizer="adam")
    learner = Reptile(Conv4(out_features=WAYS, hidden=4, image_size=16), inner=inner, inner_state="fresh")
    assert learner.carried is None and learner.initial_state(learner.eval_inner) is None
    with pytest.raises(ValueError, match="algorithm.inner_state='kept'; choose one of carried, batched, fresh"):
        Reptile(Conv4(out_features=WAYS, hidden=4, image_size=16), inner_state="kept")
