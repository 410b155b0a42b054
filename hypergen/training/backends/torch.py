"""hypergen's own update, in one process or with ``distributed.backend: "ddp"``: the optimizer (AdamW or 8-bit
Adam) and the linear schedule. With several processes the module's forward runs through torch's
DistributedDataParallel: the gradients are averaged in buckets while the backward pass of a step's last micro-batch
runs (no communication at the others), before clipping and the step."""

from __future__ import annotations

import math
import re
import warnings

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from ...errors import HypergenError
from ..distributed import Dist
from ..optim import linear_schedule, make_optimizer, optimizer_name
from .base import Method


class TorchBackend:
    """The :class:`~hypergen.training.backends.base.Backend` of one process and of ``ddp``."""

    name = "torch"
    evaluate_on_every_rank = False

    def __init__(self, method: Method, cfg, dist: Dist, accumulation: int) -> None:
        self.method, self.cfg, self.dist, self.accumulation = method, cfg, dist, accumulation
        self.optimizer = make_optimizer(method.module.parameters(), cfg)
        self.optimizer_name = optimizer_name(self.optimizer)
        self.scheduler = linear_schedule(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.data_parallel = _data_parallel(method.module, dist) if dist.active else None

    def forward(self, last: bool = True):
        """With several processes: the method's module called through DistributedDataParallel, whose gradients
        are averaged only in the backward pass of the step's ``last`` micro-batch."""
        return nullcontext() if self.data_parallel is None else self._through_data_parallel(last)

    @contextmanager
    def _through_data_parallel(self, last: bool) -> Iterator[None]:
        module = self.method.module
        self.data_parallel.require_backward_grad_sync = last  # what DistributedDataParallel.no_sync sets
        self.method.module = self.data_parallel
        try:
            yield
        finally:
            self.method.module = module

    def eval_context(self):
        return nullcontext()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.losses: list[torch.Tensor] = []  # the step's micro-batch losses, read once in step

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Backward of ``loss / accumulation``, without reading it: a non-finite loss is found in :meth:`step`
        (its NaN gradients are never applied)."""
        self.losses.append(loss.detach().float())
        (loss / self.accumulation).backward()

    def step(self, problem: str | None) -> str | None:
        """Average the gradients (several processes), clip them, and update, unless a loss of the step or the
        gradient norm is non-finite: the step's one read of the device (one flag for both)."""
        norm = self._grad_norm()  # with several processes: of the gradients averaged in the last backward pass
        *losses, norm_value = torch.stack([*self.losses, norm.float().to(self.losses[0].device)]).tolist()
        bad_loss = next((value for value in losses if not math.isfinite(value)), None)
        if bad_loss is not None:
            problem = f"non-finite loss ({bad_loss})"
        if self.dist.active and self.dist.any(problem is not None) and problem is None:
            problem = "non-finite loss in another process"  # one process's non-finite loss stops them all
        if problem is None and not math.isfinite(norm_value):
            problem = f"non-finite gradient norm ({norm_value})"
        if problem is None:
            try:
                _check_step_size(self.optimizer)
                self.optimizer.step()
            except RuntimeError as exc:  # e.g. "value cannot be converted to type float without overflow"
                if isinstance(exc, torch.OutOfMemoryError):
                    raise
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise HypergenError(f"the optimizer's update failed ({reason}) with training.lr {self.cfg.lr:g}; "
                                    "lower it") from None
        else:
            self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped first update: torch warns that the schedule stepped first
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()  # a skipped update still counts as a step
        return problem

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def _grad_norm(self) -> torch.Tensor:
        """The gradients' total norm, clipped to ``max_grad_norm`` when set (non-finite norms are left alone)."""
        params = [p for p in self.method.module.parameters() if p.grad is not None]
        if not params:
            return torch.zeros(())
        if self.cfg.max_grad_norm:
            return torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params]))

    def full_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.method.module.state_dict())

    def optimizer_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save(self, folder: Path) -> None:
        """Nothing to write: :meth:`optimizer_state` and the weights are all of this backend's state."""

    def load(self, folder: Path, model_state: dict[str, torch.Tensor], optimizer: Any) -> None:
        if not isinstance(optimizer, dict) or "optimizer" not in optimizer:
            raise HypergenError(f"{folder}: written by a run with distributed.backend "
                                f"'{optimizer.get('backend') if isinstance(optimizer, dict) else '?'}'; resume it "
                                "with the backend that wrote it")
        self.method.module.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer["optimizer"])
        self.scheduler.load_state_dict(optimizer["scheduler"])

    def finish(self) -> None:
        """Nothing to do: the module holds the trained weights."""


def _check_step_size(optimizer: torch.optim.Optimizer) -> None:
    """AdamW's step size lr / (1 - beta1^t) must fit in float32: the foreach update raises where it does not
    (converting it), the fused one would write infinite weights without a word. Checked at its largest (t = 1),
    from Python floats (no read of the device); other optimizers are left to their own checks."""
    if not isinstance(optimizer, torch.optim.AdamW):
        return
    for group in optimizer.param_groups:
        if group["lr"] / (1 - group["betas"][0]) > torch.finfo(torch.float32).max:
            raise RuntimeError("value cannot be converted to type float without overflow")


def _data_parallel(module: torch.nn.Module, dist: Dist) -> DistributedDataParallel:
    """``module`` (already on its device) wrapped for bucketed gradient averaging over the processes. Parameters a
    forward pass leaves unused are allowed (found from the output's tensors); buffers are not broadcast at each
    forward (every process holds the same ones)."""
    device_ids = [dist.local_rank] if next(module.parameters()).device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True,
                                   broadcast_buffers=False)
