"""Optimizers (AdamW, or bitsandbytes' 8-bit Adam as in the paper) and the linear warmup/decay schedule."""

from __future__ import annotations

import warnings

import torch


def make_optimizer(parameters, cfg) -> torch.optim.Optimizer:
    params = [p for p in parameters if p.requires_grad]
    if cfg.optimizer == "adam8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.Adam8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        except Exception as exc:  # noqa: BLE001 - missing package or no usable backend
            warnings.warn(f"training.optimizer: 8-bit Adam unavailable ({type(exc).__name__}: {exc}); "
                          "falling back to AdamW (pip install bitsandbytes to use it)", stacklevel=2)
    # foreach: one multi-tensor kernel per update operation instead of a Python loop over the parameters (torch
    # picks it on GPUs by itself, not on CPUs, where it is several times faster for many small tensors)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """lr factor rises linearly over ``warmup_steps``, then decays linearly to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
