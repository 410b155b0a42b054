"""What the Trainer needs of a method and of a backend, as protocols (nothing here is inherited from).

A *method* is what is trained (:mod:`hypergen.training.methods`: the hypernetwork method, fine-tuning). A *backend*
owns the backward pass and the update: :class:`~hypergen.training.backends.torch.TorchBackend` (one process or
``ddp``) or :class:`~hypergen.training.backends.deepspeed.DeepSpeedBackend`. One training step, as the Trainer's
loop calls them::

    backend.zero_grad()
    for each micro-batch:
        with backend.forward(last):
            loss, parts = method.loss(batch, step)          # loss: a scalar tensor
        problem = backend.backward(loss, last)              # None, or why the step is dropped now
    problem = backend.step(problem)                          # the update, or its skip (the schedule still steps)

Where it can, a backend checks finiteness once per step, in ``step`` (one read of the device for the losses and
the gradient norm together), not per micro-batch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ...components.base import Regularizer
from ...data.collate import Batch


@runtime_checkable
class Method(Protocol):
    """What the Trainer, its backends and the activation-recompute switches use of a method.

    ``module``: the trainable nn.Module (the DeepSpeed backend stands in for it while the loss is computed);
    ``main_model``: the frozen main model (for fine-tuning: ``module`` itself); ``regularizers``: their states are
    checkpointed, and rolled back with a skipped step; ``train_demos_in_input``: the share of training examples
    whose input holds the demos."""

    module: nn.Module
    main_model: nn.Module
    regularizers: list[Regularizer]
    train_demos_in_input: float

    def loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The scalar training loss of ``batch`` and its logged parts ({"loss": ..., one key per regularizer}):
        detached scalar tensors (floats are accepted too, at the cost of a device read each)."""

    def train(self) -> None:
        """Put the trainable module in training mode (the frozen main model stays in eval mode)."""


@runtime_checkable
class Backend(Protocol):
    """What the Trainer's loop and its checkpoints call (see the module docstring for one step)."""

    name: str  # "torch" or "deepspeed": recorded in RUN/run_info.json
    optimizer_name: str  # the optimizer class that actually runs (training.optimizer never silently changes)
    evaluate_on_every_rank: bool  # a periodic evaluation needs every process (ZeRO-3: partitioned weights)

    def forward(self, last: bool = True) -> AbstractContextManager[Any]:
        """Context around ``method.loss`` (``last``: its micro-batch ends the step)."""

    def eval_context(self) -> AbstractContextManager[Any]:
        """Context around a periodic evaluation."""

    def zero_grad(self) -> None:
        """Start a step with no gradients."""

    def backward(self, loss: torch.Tensor, last: bool) -> str | None:
        """Backward of one micro-batch's loss (``last``: it ends the step); None, or (a backend that checks each
        micro-batch) why the step is dropped here: then no more micro-batches of the step are run."""

    def step(self, problem: str | None) -> str | None:
        """The update (skipped when ``problem``, a non-finite loss of the step or a non-finite gradient); the
        schedule steps either way. Returns why the update was skipped, or None."""

    def lr(self) -> float:
        """The learning rate of the next update."""

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """The trained module's full weights on rank 0 (None on the others); a collective."""

    def optimizer_state(self) -> dict[str, Any]:
        """What a checkpoint's optimizer files hold (a tree of tensors and JSON values)."""

    def save(self, folder: Path) -> None:
        """Write the backend's own files into the temporary checkpoint folder; a collective."""

    def load(self, folder: Path, model_state: dict[str, torch.Tensor], optimizer: Any) -> None:
        """Restore weights, optimizer and schedule from checkpoint ``folder``; a collective."""

    def finish(self) -> None:
        """After training: the trained weights in ``method.module``, an ordinary module again."""
