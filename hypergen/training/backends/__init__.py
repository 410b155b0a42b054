"""Training backends, one file each behind the :class:`~.base.Backend` protocol: :mod:`.torch` (one process or
``ddp``) and :mod:`.deepspeed` (``distributed.backend: "deepspeed"``; DeepSpeed itself is imported only when its
backend is made)."""

from __future__ import annotations

from ..distributed import Dist
from .base import Backend, Method
from .deepspeed import DeepSpeedBackend
from .torch import TorchBackend


def make_backend(method: Method, cfg, distributed, dist: Dist, accumulation: int) -> Backend:
    """The backend the recipe's ``distributed`` section names (None: one process or ddp, per ``dist``), for
    ``method`` trained per the ``training`` section ``cfg`` with ``accumulation`` micro-batches per step."""
    if distributed is not None and distributed.backend == "deepspeed":
        return DeepSpeedBackend(method, cfg, distributed, dist, accumulation)
    return TorchBackend(method, cfg, dist, accumulation)
