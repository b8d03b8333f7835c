"""Start-up checks: every Trainer setting a meta-learner cannot run with fails before fit, naming the fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from scale_runs import QUIET, sine_learner
from torch import nn
from torch.func import grad
from torch.utils.data import DataLoader

from lightning_meta.algorithms.scaling import check_trainer
from lightning_meta.config import ConfigError
from lightning_meta.run import main


def _fake(precision="32-true", batching="loop", backbone=None, mixed=True, **trainer):
    """A (trainer, learner) pair with only what `check_trainer` reads; defaults pass every check."""
    fields = dict(accumulate_grad_batches=1, gradient_clip_val=None, world_size=1, inference_mode=False,
                  sampler=False) | trainer  # fmt: skip
    fake_trainer = SimpleNamespace(
        precision=precision, accumulate_grad_batches=fields["accumulate_grad_batches"],
        gradient_clip_val=fields["gradient_clip_val"], world_size=fields["world_size"],
        validate_loop=SimpleNamespace(inference_mode=fields["inference_mode"]),
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=fields["sampler"]),
    )  # fmt: skip
    learner = SimpleNamespace(batching=batching, backbone=backbone or nn.Linear(2, 2), mixed_precision=mixed,
                              mixed_precision_note="its reason")  # fmt: skip
    return fake_trainer, learner


BN = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))


@pytest.mark.parametrize(
    "setting, requested, message",
    [
        (dict(precision="bf16-true"), None, r"trainer\.precision=bf16-true keeps the weights in half precision"),
        (dict(precision="16-true"), None, r"use trainer\.precision=bf16-mixed \(CPU or GPU\) or 16-mixed \(GPU\)"),
        (dict(precision="bf16-mixed"), "16-mixed", r"trainer\.precision=16-mixed needs a CUDA GPU \(on CPU"),
        (dict(precision="bf16-mixed", batching="vmap", backbone=BN), None,
         r"bf16-mixed with algorithm\.batching=vmap fails for a backbone with batch norm .*batching=loop"),
        (dict(precision="bf16-mixed", mixed=False), None, r"SimpleNamespace runs in 32-bit only \(its reason\); use "),
        (dict(accumulate_grad_batches=4), None, r"accumulate_grad_batches=4: .* raise data\.meta_batch_size"),
        (dict(gradient_clip_val=0.5), None, r"algorithm\.outer\.grad_clip=0\.5 and trainer\.gradient_clip_val=null"),
        (dict(inference_mode=True), None, r"needs autograd; set trainer\.inference_mode=false"),
        (dict(world_size=2, sampler=True), None, r"with 2 processes: .* set trainer\.use_distributed_sampler=false"),
    ],
)  # fmt: skip
def test_unsupported_settings_name_the_fix(setting, requested, message):
    with pytest.raises(ConfigError, match=message):
        check_trainer(*_fake(**setting), requested)


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed", "16-mixed"])
def test_supported_settings_pass(precision):
    check_trainer(*_fake(precision, batching="vmap"))  # no batch norm: vmap is fine under autocast
    check_trainer(*_fake(precision, batching="loop", backbone=BN))


def test_train_py_speaks_before_lightning(shrink, capsys):
    """Lightning's own check would raise first ('Automatic gradient accumulation is not supported')."""
    assert main([*shrink, "trainer.accumulate_grad_batches=2"]) == 2
    assert (
        "error: trainer.accumulate_grad_batches=2: one training step is one whole meta-batch" in capsys.readouterr().err
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="16-mixed is refused on CPU only")
def test_16_mixed_on_cpu_is_refused_not_turned_into_bf16(shrink, capsys):
    assert main([*shrink, "trainer.precision=16-mixed"]) == 2
    assert "error: trainer.precision=16-mixed needs a CUDA GPU" in capsys.readouterr().err


def test_setup_checks_a_hand_built_trainer():
    learner, batch = sine_learner("reptile")
    with pytest.raises(ConfigError, match=r"precision=bf16-true keeps .*; trainer\.inference_mode=true: evaluation"):
        pl.Trainer(accelerator="cpu", precision="bf16-true", max_steps=1, **QUIET).fit(
            learner, train_dataloaders=DataLoader([batch], batch_size=None)
        )


def test_vmap_batch_norm_under_autocast_still_fails_in_torch():
    """The reason for the vmap + batch norm refusal; when this fails, torch has fixed it: drop that check."""
    conv = lambda w, x: torch.nn.functional.conv2d(x, w, padding=1)
    affine = torch.ones(2), torch.zeros(2)  # float32 batch-norm weights, as autocast leaves them
    loss = lambda w, x: torch.nn.functional.batch_norm(conv(w, x), None, None, *affine, training=True).float().mean()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="expected scalar type"):
        torch.func.vmap(grad(loss), in_dims=(None, 0))(torch.randn(2, 1, 3, 3), torch.randn(2, 4, 1, 5, 5))


def test_imaml_refuses_mixed_precision_at_start_up():
    learner, _ = sine_learner("imaml")
    trainer = pl.Trainer(precision="bf16-mixed", **QUIET)
    with pytest.raises(ConfigError, match=r"bf16-mixed: IMAML runs in 32-bit only \(forward-over-reverse"):
        check_trainer(trainer, learner)
