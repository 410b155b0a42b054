"""Linear layers fed a few rows at a time, as HART's decoding steps feed them (T tasks x G tokens per step).

At that size a linear layer is bound by reading its weight from memory, not by arithmetic, and on a CPU the BLAS
reads it faster as ``W @ x^T`` (the weight's rows against the input's) than as ``x @ W^T``, the way
``nn.Linear`` asks: measured on this project's 2-core CPU with weights out of cache, a 1024 -> 2816 layer takes
0.62 ms instead of 1.55 ms for 2 rows, 3.1 instead of 5.3 ms for 64, and the two meet near 1024 rows
(benchmarks/results/throughput.md); for a small weight that stays in cache (128 x 128) it is slower. :class:`FewRowsLinear`
computes the same product in that order for at most :data:`MAX_ROWS` rows of float input on a CPU outside autocast,
when the weight has at least :data:`MIN_WEIGHT_ELEMENTS` entries, and is ``nn.Linear`` otherwise; its parameters
and state dict are nn.Linear's, so checkpoints are the same with and without it.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_ROWS = 64  # at most this many input rows take the weight-rows-first product
MIN_WEIGHT_ELEMENTS = 1 << 18  # 1 MiB of fp32: smaller weights stay in cache, where nn.Linear's order is faster


class FewRowsLinear(nn.Linear):
    """``nn.Linear``; input ... x d_in, output ... x d_out. With at most :data:`MAX_ROWS` rows on a CPU and a weight
    of at least :data:`MIN_WEIGHT_ELEMENTS` entries: ``y = (W x^T)^T + b`` (the same numbers up to float rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if (x.device.type != "cpu" or not 0 < rows <= MAX_ROWS or self.weight.numel() < MIN_WEIGHT_ELEMENTS
                or x.dtype != self.weight.dtype or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        out = torch.mm(self.weight, x.reshape(rows, x.shape[-1]).t()).t().contiguous()  # rows x d_out
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
