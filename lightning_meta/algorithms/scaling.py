"""What running at scale asks of a meta-learner: start-up checks of its Trainer, and loss scaling for the
functional (`torch.func`) gradients under fp16 autocast.

Precision decision. `bf16-mixed` (CPU and GPU) needs nothing: bfloat16 has float32's exponent range. Under
`16-mixed` (GPU) Lightning's GradScaler scales only what goes through `manual_backward` -- here the surrogate
of the finished meta-gradient -- while the gradients that meet fp16 activations are the functional ones taken
inside each task (inner-loop steps; query gradients and Hessian-vector products where an algorithm takes them
with `MetaLearner.scaled_grad`). Those are taken of the loss times a static power of two
(`MetaLearner.inner_loss_scale`, 2**10) and divided by it in fp32: exact, and out of fp16's underflow range
(normal numbers start at 6e-5). An overflow makes the meta-gradient inf/nan; the GradScaler then finds
non-finite gradients when it unscales them and skips that outer step (Lightning's
`MixedPrecision.optimizer_step` runs `scaler.unscale_`, `scaler.step` and `scaler.update` under manual
optimization too). `16-true` and `bf16-true` are refused: with the weights themselves in half precision, an
inner step smaller than a weight's rounding step (about 0.4 % of the weight in bf16) is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch._C._functorch import maybe_current_level
from torch.func import grad
from torch.utils._pytree import tree_map

from lightning_meta.compat import uses_distributed_sampler
from lightning_meta.errors import ConfigError

SUPPORTED_PRECISION = ("32-true", "64-true", "bf16-mixed", "16-mixed")
MIXED_PRECISION = ("bf16-mixed", "16-mixed")


def scaled_grad(fn: Callable, scale: float, has_aux: bool = False) -> Callable:
    """`torch.func.grad(fn, has_aux=has_aux)` w.r.t. the first argument, computed as grad(scale * fn) / scale.

    As a function of its inputs the result is exactly the gradient (the scaling is a constant factor), so
    differentiating through it -- second-order MAML, Hessian-vector products -- stays exact; with a power of
    two the division is lossless in fp32. Outside any torch.func transform (the per-task loop) and with a dict
    first argument it is computed by `torch.autograd.grad` instead, the same derivative with less per-call
    overhead (torch.func wraps every tensor; docs/performance.md); a graph is kept when the dict is
    part of an enclosing autograd graph, so MAML differentiates through it there too.
    """
    functional = (
        grad(fn, has_aux=has_aux)
        if scale == 1.0
        else _unscaled(grad(_scaled(fn, scale, has_aux), has_aux=has_aux), scale, has_aux)
    )

    def gradient(*args: Any):
        if maybe_current_level() is not None or not isinstance(args[0], dict):
            return functional(*args)
        return _autograd_grad(fn, scale, has_aux, args)

    return gradient


def _scaled(fn: Callable, scale: float, has_aux: bool) -> Callable:
    def scaled_fn(*args: Any):
        out = fn(*args)
        return (out[0] * scale, out[1]) if has_aux else out * scale

    return scaled_fn


def _unscaled(scaled: Callable, scale: float, has_aux: bool) -> Callable:
    def unscaled(*args: Any):
        out = scaled(*args)
        grads, aux = out if has_aux else (out, None)
        grads = tree_map(lambda g: g / scale, grads)
        return (grads, aux) if has_aux else grads

    return unscaled


def _autograd_grad(fn: Callable, scale: float, has_aux: bool, args: tuple):
    first = args[0]
    outer = any(v.requires_grad for v in first.values())  # inside an enclosing autograd graph: keep ours
    # Each input becomes a node of its own (a view), so that the gradient is the partial derivative of `fn` in
    # that argument: `autograd.grad` w.r.t. a tensor from which another input was computed (ProtoMAML's head,
    # computed from the body's weights) would otherwise add the path through that other input.
    leaves = {k: v.view_as(v) if v.requires_grad else v.detach().requires_grad_() for k, v in first.items()}
    with torch.enable_grad():
        out = fn(leaves, *args[1:])
        loss, aux = out if has_aux else (out, None)
        scaled = loss if scale == 1.0 else loss * scale  # no identity ops: each is a node MAML's backward walks
        found = torch.autograd.grad(scaled, list(leaves.values()), create_graph=outer, allow_unused=True)
    unscale = (lambda g: g) if scale == 1.0 else (lambda g: g / scale)
    grads = {
        k: torch.zeros_like(v) if g is None else unscale(g) for (k, v), g in zip(leaves.items(), found, strict=True)
    }
    return (grads, aux) if has_aux else grads


def check_trainer(trainer: Any, learner: Any, requested_precision: Any = None) -> None:
    """Raise a `ConfigError` that names the fix for every Trainer setting a meta-learner cannot run with.

    Args:
        trainer: the `pl.Trainer` about to fit.
        learner: the `MetaLearner` it will fit.
        requested_precision: `trainer.precision` as the user wrote it, when known: Lightning turns `16-mixed`
            on CPU into `bf16-mixed` with only a warning, so the Trainer alone cannot tell.
    """
    problems = _precision_problems(str(trainer.precision), learner, requested_precision)
    if trainer.accumulate_grad_batches != 1:
        problems.append(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: one training step is one "
            "whole meta-batch; for more tasks per step raise data.meta_batch_size and set "
            "trainer.accumulate_grad_batches=1"
        )
    if trainer.gradient_clip_val:
        problems.append(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val}: the meta-learner clips the "
            f"meta-gradient itself; set algorithm.outer.grad_clip={trainer.gradient_clip_val} and "
            "trainer.gradient_clip_val=null"
        )
    if trainer.validate_loop.inference_mode:
        problems.append(
            "trainer.inference_mode=true: evaluation adapts to each task's support set, which needs "
            "autograd; set trainer.inference_mode=false"
        )
    if trainer.world_size > 1 and uses_distributed_sampler(trainer):
        problems.append(
            f"trainer.use_distributed_sampler=true with {trainer.world_size} processes: the data module "
            "already gives each process its own tasks; set trainer.use_distributed_sampler=false"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def _precision_problems(precision: str, learner: Any, requested_precision: Any) -> list[str]:
    if str(requested_precision) in ("16", "16-mixed") and precision == "bf16-mixed":
        return [
            "trainer.precision=16-mixed needs a CUDA GPU (on CPU Lightning would quietly run bf16-mixed); "
            "use trainer.precision=bf16-mixed"
        ]
    if precision not in SUPPORTED_PRECISION:
        return [
            f"trainer.precision={precision} keeps the weights in half precision, where inner steps smaller "
            "than a weight's rounding step are lost; use trainer.precision=bf16-mixed (CPU or GPU) or "
            "16-mixed (GPU)"
        ]
    if precision in MIXED_PRECISION and not learner.mixed_precision:
        return [
            f"trainer.precision={precision}: {type(learner).__name__} runs in 32-bit only "
            f"({learner.mixed_precision_note}); use trainer.precision=32-true"
        ]
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in learner.backbone.modules())
    if precision in MIXED_PRECISION and learner.batching == "vmap" and batch_norm:
        return [
            f"trainer.precision={precision} with algorithm.batching=vmap fails for a backbone with batch norm "
            f"(torch {torch.__version__}: under autocast, vmap's batch-norm backward hands float32 gradients to "
            "a low-precision convolution); set algorithm.batching=loop"
        ]
    return []
