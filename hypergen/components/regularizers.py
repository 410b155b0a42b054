"""Regularizers on the generated states.

``local_consistency`` is HART's local consistency regularization (section 3.2):

    L_cst(xi^(t)) = MSE([h_1^(t) : ... : h_L^(t)], [h_1^(t-1) : ... : h_L^(t-1)]),   L_cst(xi^(1)) = 0

with the previous iteration's states detached. The total loss is L_pred + alpha * L_cst.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import RecipeError
from ..registry import registry
from .base import Regularizer


@registry.regularizers.register("local_consistency.v1")
class LocalConsistency(Regularizer):
    """MSE between this iteration's states (T x S x d_h) and the previous iteration's.

    ``pairing="row"`` (the literal reading) compares row i with row i of the previous batch, ignoring rows that
    exist on one side only; ``pairing="mean"`` compares the batch means. The previous states are checkpointed.
    """

    def __init__(self, alpha: float = 1.0, pairing: str = "row") -> None:
        if pairing not in ("row", "mean"):
            raise RecipeError(f"local_consistency.pairing: expected 'row' or 'mean', got {pairing!r}")
        if alpha < 0:
            raise RecipeError(f"local_consistency.alpha: expected a value >= 0, got {alpha}")
        self.alpha = alpha
        self.pairing = pairing
        self.previous: torch.Tensor | None = None

    def loss(self, states: torch.Tensor, step: int) -> torch.Tensor:
        previous, self.previous = self.previous, states.detach().clone()
        if previous is None or previous.shape[1:] != states.shape[1:]:
            return states.new_zeros(())
        previous = previous.to(states.device, states.dtype)
        if self.pairing == "mean":
            return F.mse_loss(states.mean(0), previous.mean(0))
        rows = min(states.shape[0], previous.shape[0])
        return F.mse_loss(states[:rows], previous[:rows])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.previous is None else {"previous": self.previous.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.previous = state.get("previous")
