"""Several training processes (the recipe's ``distributed`` section), launched by ``torchrun`` or ``deepspeed``.

A launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` joins the process group (nccl on GPU,
gloo on CPU) and returns a :class:`Dist` describing this process. Without a launcher (or ``WORLD_SIZE`` 1) it is
the one-process :data:`SINGLE`, whose collectives are no-ops, so the trainer has one code path. With
``backend: "deepspeed"`` a single process still joins a process group, of one (127.0.0.1, a free port), because
the DeepSpeed engine needs one; :func:`teardown` leaves it again.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
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
        value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
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

_OWN_GROUP: dict[str, str | None] = {}  # the environment before a one-process group hypergen made (see setup)


def collective_device() -> torch.device:
    """Where small tensors for a collective must live: the current GPU with nccl, the CPU with gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(section, where: str = "recipe") -> Dist:
    """Join the process group a launcher set up, per the recipe's ``distributed`` section (None: one process).

    A ``deepspeed`` recipe is refused here, before anything loads, when DeepSpeed is not installed (what it cannot
    run with the ``training`` section the recipe's validation refuses)."""
    world = launched_world_size()
    if section is None:
        if world > 1:
            raise RecipeError(f"{where}: launched as {world} processes but the recipe has no 'distributed' section; "
                              "add one (e.g. \"distributed\": {\"backend\": \"ddp\"}) or run a single process")
        return SINGLE
    if section.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise RecipeError(f"{where}: distributed.backend 'deepspeed': DeepSpeed is not installed; pip install "
                          "'hypergen[scale]' (or deepspeed), or use backend 'ddp'")
    if (section.world_size is not None and 1 < world != section.world_size
            and int(os.environ.get("RANK", "0")) == 0):  # one process is a deliberate choice (a test, a debug run)
        warnings.warn(f"{where}: distributed.world_size is {section.world_size} but {world} process(es) were "
                      "launched; the global batch_size is kept (micro-batches per process change)", stacklevel=2)
    if world == 1:
        if section.backend == "deepspeed":
            _one_process_group()
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        _init_group(local_rank)
    return Dist(rank, world, local_rank)


def _init_group(local_rank: int) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    # a long timeout: the other processes wait at a barrier while rank 0 evaluates after training
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=4))


def _one_process_group() -> None:
    """A process group of one for the DeepSpeed engine: the launcher's address and port when it set them (e.g.
    ``deepspeed --num_gpus 1``), else 127.0.0.1 and a free port. The environment is restored by teardown."""
    if dist.is_initialized():
        return
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    _OWN_GROUP.clear()
    _OWN_GROUP.update({name: os.environ.get(name) for name in names})
    if not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(_free_port())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": os.environ.get("LOCAL_RANK", "0")})
    try:
        _init_group(int(os.environ["LOCAL_RANK"]))
    except BaseException:
        _restore_environment()
        raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _restore_environment() -> None:
    for name, value in _OWN_GROUP.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _OWN_GROUP.clear()


def teardown(info: Dist) -> None:
    if (info.active or _OWN_GROUP) and dist.is_initialized():
        deepspeed_comm = sys.modules.get("deepspeed.comm")
        if deepspeed_comm is not None and deepspeed_comm.is_initialized():
            deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's groups, so a later engine starts afresh
        else:
            dist.destroy_process_group()
    if _OWN_GROUP:
        _restore_environment()


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per process per optimizer step, so that one step sees ``batch_size`` examples in all."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise HypergenError(f"training.batch_size ({batch_size}) must be a multiple of micro_batch_size x processes "
                            f"({micro_batch_size} x {world_size} = {per_step})")
    return batch_size // per_step
