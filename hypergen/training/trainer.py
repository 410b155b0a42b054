"""One Trainer for every method: sample tasks, accumulate to the recipe's batch size, clip, step, log, evaluate,
checkpoint, resume. Read it top to bottom: ``fit`` is the whole loop.

Crash safety: a process killed at any moment (SIGKILL included) resumes with ``--resume`` from its last complete
checkpoint and, on CPU, reproduces the uninterrupted run exactly (losses and weights): the checkpoint holds the
weights, the optimizer (8-bit Adam's quantized state too) and LR schedule, the sampler's and both RNGs' states and
the regularizers' previous states; ``metrics.jsonl`` lines past the checkpoint (or a half-written last line) are
dropped on resume. A non-finite loss or gradient never reaches the weights: the update is skipped (the step still
counts) or training stops with an error naming the step, per ``training.on_nonfinite``; a checkpoint of
non-finite weights is never written. ``HYPERGEN_FAULT`` (see :mod:`.faults`) is a testing hook that kills the
process at a chosen point.

Several processes (``dist``, from the recipe's ``distributed`` section): each draws its own micro-batches
(its sampler is seeded with seed + rank), the gradients are averaged over the processes before clipping and the
step, so every process holds the same weights and optimizer state; the logged loss is the mean over processes.
Rank 0 alone logs and writes checkpoints; a checkpoint holds every process's sampler, RNG and regularizer states
(gathered), so a run resumes with the same number of processes exactly where it stopped.

The backward pass and the update belong to a backend (:mod:`.backends`, picked by :func:`.backends.make_backend`):
hypergen's optimizer in one process or with ``ddp``, or with ``distributed.backend: "deepspeed"`` the DeepSpeed
engine. The loop is the same for both; :class:`.backends.base.Backend` lists what it calls."""

from __future__ import annotations

import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..data.collate import Collator
from ..data.sampling import TaskSampler
from ..errors import HypergenError
from ..io import atomic_write_json
from .backends import make_backend
from .backends.base import Method
from .checkpoint import (begin_checkpoint, finish_checkpoint, list_checkpoints, load_latest_checkpoint,
                         remove_partial_checkpoints, temporary_checkpoint_dir)
from .distributed import SINGLE, Dist, accumulation_steps, collective_device
from .faults import maybe_kill
from .loggers import Loggers
from .metrics_log import truncate_metrics
from .prefetch import PrefetchedBatches
from .utilisation import Throughput


class Trainer:
    def __init__(self, method: Method, sampler: TaskSampler, collator: Collator, cfg, run_dir: Path, device,
                 evaluate_fn: Callable[[], dict[str, Any]] | None = None, progress: bool = True,
                 dist: Dist = SINGLE, precision: str = "fp32", distributed=None) -> None:
        """``distributed``: the recipe's section (None: one process or ddp, per ``dist``); its backend
        "deepspeed" trains through a DeepSpeed engine. ``precision`` "bf16": forward and backward under bfloat16
        autocast."""
        self.method = method
        self.sampler = sampler
        self.collator = collator
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = device
        self.evaluate_fn = evaluate_fn
        self.dist = dist
        self.progress = progress and dist.is_main
        self.autocast = precision == "bf16"
        self.accumulation = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, dist.world_size)
        self.backend = make_backend(method, cfg, distributed, dist, self.accumulation)
        self.tasks_per_micro = max(1, cfg.micro_batch_size // sampler.queries_per_task)
        self.throughput = Throughput(device, self.autocast)
        self.step = 0
        self.loggers = Loggers(cfg.loggers)  # metrics.jsonl plus the recipe's training.loggers (rank 0 logs)
        self.batches: PrefetchedBatches | None = None  # while fit runs

    # -- state -------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.batches.consumed_state if self.batches else self.sampler.state_dict(),
            "regularizers": [r.state_dict() for r in self.method.regularizers],
            "torch_rng": torch.get_rng_state(),
            "python_rng": _jsonable(random.getstate()),
        }

    def _full_state(self) -> dict[str, Any]:
        """This process's state, or with several processes every process's (a collective: all must call it)."""
        if not self.dist.active:
            return self._state()
        return {"step": self.step, "world_size": self.dist.world_size,
                "ranks": self.dist.gather_objects(self._state())}

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every process must call this); None on the other ranks."""
        state = self._full_state()
        weights = self.backend.full_weights()  # on rank 0; gathered from every process under DeepSpeed
        bad = nonfinite_tensors(weights) if self.dist.is_main else []
        if self.dist.any(bool(bad)):  # every process stops here, before anything is written
            raise HypergenError(f"step {self.step}: weights {', '.join(bad[:3]) or 'of rank 0'} hold NaN or "
                                "infinite values; refusing to write a checkpoint of them")
        if self.dist.is_main:
            begin_checkpoint(self.run_dir, self.step)
        self.dist.barrier()
        self.backend.save(temporary_checkpoint_dir(self.run_dir, self.step))  # the backend's own files, if any
        self.dist.barrier()
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        try:
            return finish_checkpoint(self.run_dir, self.step, weights, self.backend.optimizer_state(), state,
                                     self.cfg.keep_checkpoints)
        finally:
            self.dist.barrier()

    def resume(self) -> bool:
        """Load the newest valid checkpoint of the run; False when there is none (then start from step 0).

        Whatever a killed process left past that checkpoint goes: temporary checkpoint folders and files, invalid
        checkpoints newer than it, and ``metrics.jsonl`` lines of later steps (or a half-written last line).
        With several processes, each reads the checkpoint and rank 0 alone cleans up."""
        if self.dist.is_main:
            remove_partial_checkpoints(self.run_dir)
            for leftover in self.run_dir.glob(".*.tmp"):  # from an atomic write cut short
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
        self.dist.barrier()
        found = load_latest_checkpoint(self.run_dir)
        self.dist.barrier()  # every process has read it before rank 0 removes anything
        if found is None:
            self.step = 0
            if self.dist.is_main:
                truncate_metrics(self.run_dir, self.step)
            return False
        folder, model_state, optimizer, state = found
        saved_world = state.get("world_size", 1) if isinstance(state, dict) else 1
        if saved_world != self.dist.world_size:
            raise HypergenError(f"{folder}: written by a run of {saved_world} process(es); resume it with the "
                                f"same number (this launch has {self.dist.world_size})")
        if self.dist.active:
            state = {**state["ranks"][self.dist.rank], "step": state["step"]}
        self.backend.load(folder, model_state, optimizer)
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self._load_regularizers(state["regularizers"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_tupled(state["python_rng"]))
        if self.dist.is_main:
            for newer in list_checkpoints(self.run_dir):
                if newer.name > folder.name:  # failed verification: would only be mistaken for a valid one later
                    shutil.rmtree(newer, ignore_errors=True)
            truncate_metrics(self.run_dir, self.step)
        self.dist.barrier()
        return True

    def _load_regularizers(self, states: list[dict[str, Any]]) -> None:
        for regularizer, reg_state in zip(self.method.regularizers, states):
            regularizer.load_state_dict(reg_state)

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train from ``self.step`` to ``training.steps``; return one record per step (what rank 0 logs)."""
        cfg = self.cfg
        history: list[dict[str, Any]] = []
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        smoothed: dict[str, float] = {}  # the progress bar's moving averages
        examples, started = 0, time.perf_counter()
        self.skipped_in_a_row = 0  # consecutive skipped updates (training.max_consecutive_skips)
        if self.dist.is_main:  # what actually ran, next to the recipe that asked for it
            atomic_write_json(self.run_dir / "run_info.json",
                              {"optimizer": self.backend.optimizer_name, "backend": self.backend.name})
            self.loggers.open(self.run_dir, self.step)
        self.batches = PrefetchedBatches(self.sampler, self.collator, self.tasks_per_micro,
                                         self.method.train_demos_in_input, self.device)
        while self.step < cfg.steps:
            parts, seen, problem = self._accumulate()
            try:
                problem = self.backend.step(problem)  # the update, unless something was non-finite (then skipped)
            except HypergenError as exc:  # the update itself overflowed (an absurd learning rate)
                raise HypergenError(f"step {self.step + 1}: {exc}; stopped; nothing after step {self.step} was "
                                    "checkpointed") from None
            self.skipped_in_a_row = self.skipped_in_a_row + 1 if problem is not None else 0
            for regularizer in self.method.regularizers:  # iteration t ends: its states become the previous ones,
                regularizer.end_step(applied=problem is None)  # unless the update was skipped (then dropped)
            if problem is not None:
                self._skipped(problem, bar)
                parts = {"loss": None, "skipped": problem}
            else:
                parts = self._read_parts(parts)
            self.step += 1
            examples += seen
            rates = self.throughput.rates(examples, time.perf_counter() - started, self.dist.world_size)
            _smooth(smoothed, parts)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in smoothed.items()}, "ex/s": f"{rates['examples_per_s']:.1f}",
                             "tok/s": f"{rates['tokens_per_s']:.0f}", "util": f"{rates['utilisation']:.1%}"},
                            refresh=False)
            bar.update(1)
            record = {"step": self.step, **parts, "lr": self.backend.lr(), **rates}
            if self._evaluates_now():
                self.batches.settle()  # the collator's tokenizer, free for the evaluation
                with self.backend.eval_context():
                    record["eval"] = self.evaluate_fn()["overall"]
                bar.write(f"step {self.step}: eval {record['eval']}")
            history.append(record)
            if self.dist.is_main and (self.step % cfg.log_every == 0 or "eval" in record or self.step == cfg.steps):
                self.loggers.log(record)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save()
            maybe_kill("after_step", self.step)  # testing hook (HYPERGEN_FAULT); a no-op otherwise
        self.batches.close()  # the sampler back where the batches used leave it
        self.batches = None
        bar.close()
        if self.dist.is_main:
            self.loggers.close()
        self.backend.finish()  # the trained weights in the module, ready to save and evaluate in one process
        return history

    def _accumulate(self) -> tuple[dict[str, torch.Tensor], int, str | None]:
        """The forward and backward passes of one step's micro-batches: (the loss parts averaged over them, float64
        scalar tensors not yet read from the device, the examples seen by all processes, None or why the step must
        be dropped: then it stops at that micro-batch)."""
        self.method.train()
        self.backend.zero_grad()
        parts_sum: dict[str, torch.Tensor] = {}
        seen = 0
        for micro in range(self.accumulation):
            batch = self.batches.next()
            last = micro == self.accumulation - 1
            with self.throughput.measure(batch):
                with self._autocast(), self.backend.forward(last):
                    loss, parts = self.method.loss(batch, self.step)
                problem = self.backend.backward(loss, last)
            if problem is not None:  # dropped here (DeepSpeed): the step's other batches are drawn all the same,
                for _ in range(micro + 1, self.accumulation):  # so the sampler ends where the torch backend's does
                    self.batches.next()
                return parts_sum, seen, problem
            seen += batch.num_examples * self.dist.world_size
            for k, v in parts.items():  # float64, as a Python float sum would be
                parts_sum[k] = parts_sum.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64) / self.accumulation
        return parts_sum, seen, None

    def _skipped(self, problem: str, bar) -> None:
        """A dropped update: stop (``training.on_nonfinite`` "stop") or say so and go on."""
        if self.cfg.on_nonfinite == "stop":
            raise HypergenError(
                f"step {self.step + 1}: {problem}; stopped (training.on_nonfinite is 'stop'); the weights "
                f"were not updated and nothing after step {self.step} was checkpointed")
        limit = self.cfg.max_consecutive_skips
        if limit and self.skipped_in_a_row >= limit:
            raise HypergenError(
                f"step {self.step + 1}: {self.skipped_in_a_row} updates in a row were skipped (the last: {problem}); "
                f"the run is not learning, stopped (training.max_consecutive_skips is {limit}); lower training.lr "
                "or check the data; the checkpoints written so far are kept")
        bar.write(f"step {self.step + 1}: {problem}, update skipped")

    def _evaluates_now(self) -> bool:
        """A periodic evaluation at this step, in this process."""
        return bool(self.evaluate_fn and self.cfg.eval_every and self.step % self.cfg.eval_every == 0
                    and (self.dist.is_main or self.backend.evaluate_on_every_rank))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()

    def _read_parts(self, parts_sum: dict[str, torch.Tensor]) -> dict[str, float]:
        """The logged loss parts as floats, averaged over the processes: one read of the device (and one
        all-reduce with several processes)."""
        if not parts_sum:
            return {}
        keys = sorted(parts_sum)
        values = torch.stack([parts_sum[k].to(collective_device() if self.dist.active else parts_sum[k].device)
                              for k in keys])
        self.dist.all_reduce_mean_([values])
        return dict(zip(keys, values.tolist()))


def _smooth(smoothed: dict[str, float], parts: dict[str, Any]) -> None:
    """Update the progress bar's exponential moving averages (0.9) with this step's float parts, in place."""
    for k, v in parts.items():
        if isinstance(v, float):
            smoothed[k] = v if k not in smoothed or math.isnan(smoothed[k]) else 0.9 * smoothed[k] + 0.1 * v


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` that hold NaN or infinite values."""
    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
