"""Regularizers on the generated states.

``local_consistency`` is HART's local consistency regularization (section 3.2):

    L_cst(xi^(t)) = MSE([h_1^(t) : ... : h_L^(t)], [h_1^(t-1) : ... : h_L^(t-1)]),   L_cst(xi^(1)) = 0

where t is the training iteration (one optimizer update) and the previous iteration's states are detached. The
total loss is L_pred + alpha * L_cst.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import RecipeError
from ..registry import registry
from .base import Regularizer


@registry.regularizers.register("local_consistency.v1")
class LocalConsistency(Regularizer):
    """MSE between this iteration's states and the previous iteration's, micro-batch by micro-batch.

    An optimizer step of k micro-batches calls :meth:`loss` k times (micro-batch m = the m-th call of the step,
    ``states`` T_m x S x d_h, one row per task draw of that micro-batch, in the order the sampler drew them).
    Micro-batch m of step t is compared with micro-batch m of step t-1, whose states were computed under the
    weights before step t-1's update; every micro-batch of the first step gives 0. With several processes each
    process pairs its own micro-batches the same way. The trainer divides each micro-batch's loss by k and averages
    the gradients over the processes, so with equal-sized micro-batches the weighted term is the MSE over all the
    rows of the global batch: the same for one micro-batch of B, k of B/k, or P processes.

    ``pairing="row"`` (the literal reading) compares row i with row i of the same micro-batch of the previous step:
    the i-th task drawn then, which in a batch mixing tasks is usually another task (the paper does not say how
    tasks are paired; see README, "Choices where the paper is open"). Rows present on one side only are ignored.
    ``pairing="mean"`` compares the mean over the micro-batch's rows with the mean over the same micro-batch's rows
    at the previous step: with ``micro_batch_size == batch_size`` that is the batch-mean reading; with smaller
    micro-batches it compares micro-batch means (an exact batch-mean comparison under accumulation would have to
    keep every micro-batch's graph until the step's last one), so its value depends on the micro-batch size, but
    not on how the micro-batches are spread over processes.

    A step whose update was skipped (non-finite) leaves the previous states as they were: :meth:`end_step`. The
    previous states (and those of a step in progress) are checkpointed.
    """

    def __init__(self, alpha: float = 1.0, pairing: str = "row") -> None:
        if pairing not in ("row", "mean"):
            raise RecipeError(f"local_consistency.pairing: expected 'row' or 'mean', got {pairing!r}")
        if alpha < 0:
            raise RecipeError(f"local_consistency.alpha: expected a value >= 0, got {alpha}")
        self.alpha = alpha
        self.pairing = pairing
        self.previous: list[torch.Tensor] = []  # micro-batch m of the last applied step: T_m x S x d_h, detached
        self.current: list[torch.Tensor] = []   # micro-batches of the step in progress
        self.current_step: int | None = None

    def loss(self, states: torch.Tensor, step: int) -> torch.Tensor:
        if self.current and step != self.current_step:  # a caller that does not call end_step: the step counted
            self.end_step(applied=True)
        self.current_step = step
        micro = len(self.current)
        self.current.append(states.detach().clone())
        if micro >= len(self.previous) or self.previous[micro].shape[1:] != states.shape[1:]:
            return states.new_zeros(())
        previous = self.previous[micro].to(states.device, states.dtype)
        if self.pairing == "mean":
            return F.mse_loss(states.mean(0), previous.mean(0))
        rows = min(states.shape[0], previous.shape[0])
        return F.mse_loss(states[:rows], previous[:rows])

    def end_step(self, applied: bool) -> None:
        if applied and self.current:
            self.previous = self.current
        self.current, self.current_step = [], None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"previous.{m}": t.cpu() for m, t in enumerate(self.previous)},
                **{f"current.{m}": t.cpu() for m, t in enumerate(self.current)}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.previous = [state[f"previous.{m}"] for m in range(sum(k.startswith("previous.") for k in state))]
        self.current = [state[f"current.{m}"] for m in range(sum(k.startswith("current.") for k in state))]
        self.current_step = None
