"""Optimizers (AdamW, or bitsandbytes' 8-bit Adam as in the paper) and the linear warmup/decay schedule.

A recipe that asks for ``adam8bit`` where bitsandbytes cannot be used fails at once (never silently AdamW); the
optimizer that ran is recorded in the run folder (``run_info.json``, written by the trainer)."""

from __future__ import annotations

import torch

from ..errors import RecipeError


LR_SCALE = "hypergen_lr_scale"
"""An attribute a module may set on one of its parameters: that parameter's learning rate is ``lr`` times it (the
projector's output layers, whose every Adam step moves the generated weights by about ``lr`` times their fan-in)."""


def make_optimizer(parameters, cfg) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable ``parameters``, one parameter group per learning-rate scale (a
    parameter's :data:`LR_SCALE` attribute, default 1): group lr = ``cfg.lr`` x scale."""
    params = [p for p in parameters if p.requires_grad]
    scales: dict[float, list[torch.Tensor]] = {}
    for param in params:
        scales.setdefault(float(getattr(param, LR_SCALE, 1.0)), []).append(param)
    groups = [{"params": group, "lr": cfg.lr * scale}  # the unscaled group first: the one logged as "lr"
              for scale, group in sorted(scales.items(), key=lambda item: item[0] != 1.0)]
    if cfg.optimizer == "adam8bit":
        return _adam8bit(groups, cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **_adamw_kernel(params))


def _adamw_kernel(params: list[torch.Tensor]) -> dict[str, bool]:
    """``fused`` (the whole update of a parameter in one kernel) where torch has it for every parameter's device:
    on this 2-core CPU 4-5x faster than ``foreach`` for the tiny HART's 85 parameters (31 vs 147 ms CPU time a
    step), which is itself faster than torch's CPU default, a Python loop of ~10 ops per parameter; else
    ``foreach``."""
    if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def check_optimizer(cfg) -> None:
    """Fail before anything is loaded when ``cfg.optimizer`` cannot be built here (RecipeError naming it)."""
    make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)


def _adam8bit(params, cfg) -> torch.optim.Optimizer:
    try:
        import bitsandbytes as bnb

        return bnb.optim.Adam8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    except Exception as exc:  # noqa: BLE001 - missing package or no usable backend
        raise RecipeError(f"training.optimizer: 'adam8bit' needs bitsandbytes, which cannot be used here "
                          f"({type(exc).__name__}: {exc}); pip install bitsandbytes, or set training.optimizer to "
                          "'adamw'") from None


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class, e.g. ``bitsandbytes.optim.adam.Adam8bit`` or ``torch.optim.adamw.AdamW``."""
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """lr factor rises linearly over ``warmup_steps``, then decays linearly to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
