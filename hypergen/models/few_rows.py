"""Linear layers fed a few rows at a time, as HART's decoding steps feed them (T tasks x G tokens per step).

At that size a linear layer is bound by reading its weight from memory, not by arithmetic, and on a CPU the BLAS
reads it faster as ``W @ x^T`` (the weight's rows against the input's) than as ``x @ W^T``, the way
``nn.Linear`` asks: measured on this project's 2-core CPU with weights out of cache, a 1024 -> 2816 layer takes
0.62 ms instead of 1.55 ms for 2 rows, 3.1 instead of 5.3 ms for 64, and the two meet near 1024 rows
(benchmarks/results/throughput.md); for a small weight that stays in cache (128 x 128) it is slower. :class:`FewRowsLinear`
computes the same product in that order for at most :data:`MAX_ROWS` rows of float input on a CPU outside autocast,
when the weight has at least :data:`MIN_WEIGHT_ELEMENTS` entries, and is ``nn.Linear`` otherwise; its parameters
and state dict are nn.Linear's, so checkpoints are the same with and without it.

Deferred weight gradients (:func:`deferred_weight_gradients`): HART's L decoding steps use each decoder weight L
times, so autograd accumulates L rank-(few rows) products ``g_s^T x_s`` into the weight's gradient, each one a pass
over a gradient as large as the weight (memory-bound: on the 2-core CPU, 1024 -> 2816 with 2 rows, 3.8-5.1 ms of
backward with the weight's gradient against 0.9-1.2 ms without). Inside the context, the few-rows products of one
forward pass all read the weight through one alias whose backward computes ``dL/dW = G^T X`` once (G, X: every
step's output gradients and inputs, stacked: the same sum), then hands it to autograd as usual, so the weight's
gradient is accumulated once and its hooks (DistributedDataParallel's, DeepSpeed's) fire once, after all steps.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

MAX_ROWS = 64  # at most this many input rows take the weight-rows-first product
MIN_WEIGHT_ELEMENTS = 1 << 18  # 1 MiB of fp32: smaller weights stay in cache, where nn.Linear's order is faster
_BUCKET = "_hypergen_weight_gradient_bucket"  # on a FewRowsLinear inside deferred_weight_gradients


class FewRowsLinear(nn.Linear):
    """``nn.Linear``; input ... x d_in, output ... x d_out. With at most :data:`MAX_ROWS` rows on a CPU and a weight
    of at least :data:`MIN_WEIGHT_ELEMENTS` entries: ``y = (W x^T)^T + b`` (the same numbers up to float rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if (x.device.type != "cpu" or not 0 < rows <= MAX_ROWS or self.weight.numel() < MIN_WEIGHT_ELEMENTS
                or x.dtype != self.weight.dtype or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])
        bucket = getattr(self, _BUCKET, None)
        if bucket is not None and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            out = _RowsFirstProduct.apply(flat, bucket.weight_alias(self.weight), bucket)
        else:
            out = torch.mm(self.weight, flat.t()).t().contiguous()  # rows x d_out
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def use_few_rows_linears(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` under ``module`` a :class:`FewRowsLinear` (in place, weights kept); return how
    many."""
    count = 0
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = FewRowsLinear
            count += 1
    return count


class _WeightGradientBucket:
    """One weight's alias for one forward pass and the (input rows, output gradient rows) of every product taken
    through it, filled in the backward pass."""

    def __init__(self) -> None:
        self.alias: torch.Tensor | None = None
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def weight_alias(self, weight: torch.Tensor) -> torch.Tensor:
        if self.alias is None:
            self.alias = _DeferredWeightGradient.apply(weight, self)
        return self.alias


class _DeferredWeightGradient(torch.autograd.Function):
    """Forward: the weight (d_out x d_in) itself, as an alias. Backward (after every product that used the alias,
    autograd's order): ``dL/dW = G^T X``, G: N x d_out, X: N x d_in, the N rows of all those products stacked."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bucket: _WeightGradientBucket) -> torch.Tensor:
        ctx.bucket = bucket
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        bucket = ctx.bucket
        if bucket.grads:
            stacked = torch.mm(torch.cat(bucket.grads).t(), torch.cat(bucket.inputs))  # d_out x d_in
            grad = stacked if grad is None else grad + stacked
            bucket.inputs, bucket.grads = [], []
        return grad, None


class _RowsFirstProduct(torch.autograd.Function):
    """``y = (W x^T)^T``: x N x d_in, W d_out x d_in (the alias), y N x d_out. Backward: ``dL/dx = g W`` now; the
    weight's share ``g^T x`` is left to the alias (its gradient here: none)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weight: torch.Tensor, bucket: _WeightGradientBucket) -> torch.Tensor:
        ctx.save_for_backward(flat, weight)
        ctx.bucket = bucket
        return torch.mm(weight, flat.t()).t().contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, weight = ctx.saved_tensors
        ctx.bucket.inputs.append(flat)
        ctx.bucket.grads.append(grad)
        return torch.mm(grad, weight) if ctx.needs_input_grad[0] else None, None, None


@contextmanager
def deferred_weight_gradients(*modules: nn.Module) -> Iterator[int]:
    """Within the block, the few-rows products of each :class:`FewRowsLinear` under ``modules`` whose weight is
    trained share one alias of the weight, whose gradient is computed at once (module docstring). Yields how many
    linears take part (0 when gradients are off). Not for a pass whose blocks are recomputed in the backward
    (gradient checkpointing): the recomputation runs outside the block. Weights partitioned by DeepSpeed ZeRO-3
    (gathered per call) are left out."""
    linears = [sub for module in modules for sub in module.modules() if isinstance(sub, FewRowsLinear)
               and sub.weight.requires_grad and not hasattr(sub.weight, "ds_id")] if torch.is_grad_enabled() else []
    for linear in linears:
        setattr(linear, _BUCKET, _WeightGradientBucket())
    try:
        yield len(linears)
    finally:
        for linear in linears:
            delattr(linear, _BUCKET)
