"""``ema_consistency.v1``: consistency against an exponential moving average of past states.

HART's local consistency compares this iteration's states with the previous iteration's only. Here the target is
an EMA of every past iteration's states::

    L(xi^(1)) = 0,   L(xi^(t)) = MSE(h^(t), m^(t-1)),   m^(t) = decay * m^(t-1) + (1 - decay) * h^(t)

with m detached (no gradient flows into the average) and m^(1) = h^(1). Rows (tasks) are paired as in
``local_consistency``: row i with row i, comparing only the rows present on both sides. Rows present only in
this iteration start their average; rows present only in the average keep it. A change of the states' per-task
shape (S x d_h) restarts the average. The average is checkpointed, so a resumed run reproduces the next loss; a
skipped (non-finite) step leaves it as it was. Every call (micro-batch) updates the average.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hypergen.components.base import Regularizer
from hypergen.errors import RecipeError


class EMAConsistency(Regularizer):
    """MSE between this iteration's states (T x S x d_h) and the detached EMA of past iterations' states."""

    def __init__(self, alpha: float = 1.0, decay: float = 0.9) -> None:
        if alpha < 0:
            raise RecipeError(f"ema_consistency.alpha: expected a value >= 0, got {alpha}")
        if not 0.0 <= decay < 1.0:
            raise RecipeError(f"ema_consistency.decay: expected 0 <= decay < 1, got {decay}")
        self.alpha = alpha
        self.decay = decay
        self.ema: torch.Tensor | None = None
        self._in_step, self._before_step = False, None  # the average before this step's first update

    def loss(self, states: torch.Tensor, step: int) -> torch.Tensor:
        if not self._in_step:
            self._in_step, self._before_step = True, self.ema
        current = states.detach()
        if self.ema is None or self.ema.shape[1:] != states.shape[1:]:
            self.ema = current.clone()
            return states.new_zeros(())
        ema = self.ema.to(current.device, current.dtype)
        rows = min(states.shape[0], ema.shape[0])
        value = F.mse_loss(states[:rows], ema[:rows])
        updated = self.decay * ema[:rows] + (1.0 - self.decay) * current[:rows]
        self.ema = torch.cat([updated, ema[rows:], current[rows:]], dim=0)  # at most one of the tails is non-empty
        return value

    def end_step(self, applied: bool) -> None:
        """A skipped (non-finite) step's updates of the average are undone."""
        if not applied and self._in_step:
            self.ema = self._before_step
        self._in_step, self._before_step = False, None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.ema is None else {"ema": self.ema.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ema = state.get("ema")
