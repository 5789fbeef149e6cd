"""Optimizer parameter groups and learning-rate schedules shared by the training modules.

* :func:`param_groups_weight_decay`: weight decay on weights only; no decay on biases, norm parameters and any
  other 1-D parameter, nor on names listed by the model's ``no_weight_decay()`` (timm convention: position
  embeddings, tokens).
* :func:`scaled_lr`: the linear scaling rule ``lr = base_lr * global_batch / base_batch`` (DeiT/FaViT: 512).
* :func:`fused_adamw_supported`: whether ``AdamW(fused=True)`` (one kernel over all parameters) applies.
* :func:`warmup_cosine_cooldown`: per-step multiplier for ``LambdaLR``: linear warm-up from ``warmup_lr`` to the
  peak, cosine decay to ``min_lr``, then ``cooldown`` steps held at ``min_lr`` (timm's ``cooldown_epochs``, as
  the report's "10 warm-up and 10 cool-down epochs").
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["fused_adamw_supported", "param_groups_weight_decay", "scaled_lr", "warmup_cosine_cooldown"]

_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def fused_adamw_supported(model: nn.Module) -> bool:
    """True if every trainable parameter is a dense floating tensor on one CPU or CUDA device.

    The fused AdamW kernel updates all parameters in one pass. On a CPU it replaces the per-tensor loop of the
    default (foreach) implementation, which on small models costs more than the update itself: ~3x less optimizer
    time for the 0.41 M-parameter quick-job FaViT (``results/favit-benchmark.md``). It computes the same update
    up to float rounding
    (``tests/test_classification.py::test_cpu_training_uses_the_fused_adamw_and_it_matches_the_adamw_update``).
    """
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return False
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in _FUSED_DEVICES
        and all(p.dtype in _FUSED_DTYPES and not p.is_sparse for p in params)
    )


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ()
) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group."""
    skip = set(no_decay_names)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def scaled_lr(base_lr: float, global_batch: int, base_batch: int | None = 512) -> float:
    """Linear scaling rule; ``base_batch=None`` (or 0) uses ``base_lr`` as the actual lr."""
    if not base_batch:
        return base_lr
    return base_lr * global_batch / base_batch


def warmup_cosine_cooldown(
    total_steps: int,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
    min_ratio: float = 0.0,
    warmup_start_ratio: float = 0.0,
) -> Callable[[int], float]:
    """Return ``f(step) -> lr multiplier`` for ``torch.optim.lr_scheduler.LambdaLR``.

    ``total_steps`` includes warm-up and cool-down. The multiplier goes linearly from ``warmup_start_ratio`` to 1
    over ``warmup_steps``, then follows a half cosine from 1 to ``min_ratio`` over the remaining steps before the
    cool-down, and stays at ``min_ratio`` during the last ``cooldown_steps``.
    """
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps))
    cooldown_steps = max(0, min(int(cooldown_steps), total_steps - warmup_steps))
    decay_steps = max(1, total_steps - warmup_steps - cooldown_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps
        t = min(1.0, (step - warmup_steps) / decay_steps)
        return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * t))

    return f
