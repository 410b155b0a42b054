"""Several training processes (the recipe's ``distributed`` section), launched by ``torchrun`` or ``deepspeed``.

A launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` joins the process group (nccl on GPU,
gloo on CPU) and returns a :class:`Dist` describing this process. Without a launcher (or ``WORLD_SIZE`` 1) it is
the one-process :data:`SINGLE`, whose collectives are no-ops, so the trainer has one code path.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..errors import HypergenError, RecipeError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` over the processes, in place (one flat all-reduce)."""
        if not self.active or not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset: offset + n].view_as(t).to(t.dtype))
            offset += n

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on at least one."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (on every process)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. writing a data cache the others then read)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


SINGLE = Dist()


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(section, where: str = "recipe") -> Dist:
    """Join the process group a launcher set up, per the recipe's ``distributed`` section (None: one process)."""
    world = launched_world_size()
    if section is None:
        if world > 1:
            raise RecipeError(f"{where}: launched as {world} processes but the recipe has no 'distributed' section; "
                              "add one (e.g. \"distributed\": {\"backend\": \"ddp\"}) or run a single process")
        return SINGLE
    if section.backend == "deepspeed":
        raise RecipeError(f"{where}: distributed.backend 'deepspeed' is not available in this version of hypergen "
                          "(DeepSpeed engine integration is not finished); use \"backend\": \"ddp\" with the same "
                          "launchers (torchrun, or deepspeed --num_gpus N)")
    if (section.world_size is not None and 1 < world != section.world_size
            and int(os.environ.get("RANK", "0")) == 0):  # one process is a deliberate choice (a test, a debug run)
        warnings.warn(f"{where}: distributed.world_size is {section.world_size} but {world} process(es) were "
                      "launched; the global batch_size is kept (micro-batches per process change)", stacklevel=2)
    if world == 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        # a long timeout: the other processes wait at a barrier while rank 0 evaluates after training
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=4))
    return Dist(rank, world, local_rank)


def teardown(info: Dist) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per process per optimizer step, so that one step sees ``batch_size`` examples in all."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise HypergenError(f"training.batch_size ({batch_size}) must be a multiple of micro_batch_size x processes "
                            f"({micro_batch_size} x {world_size} = {per_step})")
    return batch_size // per_step
