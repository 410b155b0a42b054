"""One Trainer for every method: sample tasks, accumulate to the recipe's batch size, clip, step, log, evaluate,
checkpoint, resume. Read it top to bottom: ``fit`` is the whole loop."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..data.collate import Collator
from ..data.sampling import TaskSampler
from ..io import atomic_write_text
from .checkpoint import load_latest_checkpoint, save_checkpoint
from .optim import linear_schedule, make_optimizer


class Trainer:
    def __init__(self, method, sampler: TaskSampler, collator: Collator, cfg, run_dir: Path, device,
                 evaluate_fn: Callable[[], dict[str, Any]] | None = None, progress: bool = True) -> None:
        self.method = method
        self.sampler = sampler
        self.collator = collator
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = device
        self.evaluate_fn = evaluate_fn
        self.progress = progress
        self.optimizer = make_optimizer(method.module.parameters(), cfg)
        self.scheduler = linear_schedule(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.accumulation = cfg.batch_size // cfg.micro_batch_size
        self.tasks_per_micro = max(1, cfg.micro_batch_size // sampler.queries_per_task)
        self.step = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # -- state -------------------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.method.module.state_dict().items()}

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "regularizers": [r.state_dict() for r in self.method.regularizers],
            "torch_rng": torch.get_rng_state(),
            "python_rng": _jsonable(random.getstate()),
        }

    def save(self) -> Path:
        optimizer = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        return save_checkpoint(self.run_dir, self.step, self.trainable_state(), optimizer, self._state(),
                               self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest valid checkpoint of the run; False when there is none."""
        found = load_latest_checkpoint(self.run_dir)
        if found is None:
            return False
        _, model_state, optimizer, state = found
        self.method.module.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer["optimizer"])
        self.scheduler.load_state_dict(optimizer["scheduler"])
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        for regularizer, reg_state in zip(self.method.regularizers, state["regularizers"]):
            regularizer.load_state_dict(reg_state)
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_tupled(state["python_rng"]))
        self._truncate_metrics()
        return True

    def _truncate_metrics(self) -> None:
        """Drop log lines written after the checkpoint we resume from."""
        if not self.metrics_path.is_file():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines()
                 if line.strip() and json.loads(line).get("step", 0) <= self.step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in lines))

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        history: list[dict[str, Any]] = []
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        window: dict[str, float] = {}
        examples, started = 0, time.perf_counter()
        while self.step < cfg.steps:
            self.method.train()
            self.optimizer.zero_grad(set_to_none=True)
            parts_sum: dict[str, float] = {}
            finite = True
            for _ in range(self.accumulation):
                batch = self.collator(self.sampler.next_batch(self.tasks_per_micro),
                                      demos_in_input=self.method.train_demos_in_input).to(self.device)
                loss, parts = self.method.loss(batch, self.step)
                if not torch.isfinite(loss):
                    finite = False
                    break
                (loss / self.accumulation).backward()
                examples += batch.num_examples
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / self.accumulation
            if not finite:
                bar.write(f"step {self.step}: non-finite loss, update skipped")
                self.optimizer.zero_grad(set_to_none=True)
                parts_sum = {"loss": float("nan")}
            else:
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.method.module.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            for k, v in parts_sum.items():
                window[k] = v if k not in window or math.isnan(window[k]) else 0.9 * window[k] + 0.1 * v
            rate = examples / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in window.items()}, "ex/s": f"{rate:.1f}"}, refresh=False)
            bar.update(1)
            record = {"step": self.step, **parts_sum, "lr": self.scheduler.get_last_lr()[0], "examples_per_s": rate}
            if self.evaluate_fn and cfg.eval_every and self.step % cfg.eval_every == 0:
                record["eval"] = self.evaluate_fn()["overall"]
                bar.write(f"step {self.step}: eval {record['eval']}")
            history.append(record)
            if self.step % cfg.log_every == 0 or "eval" in record or self.step == cfg.steps:
                self._log(record)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        return history

    def _log(self, record: dict[str, Any]) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
