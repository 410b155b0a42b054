"""Backprop fine-tuning of the frozen main model on one task's demos (hypergen/baselines.py's per-task LoRA and
prefix tuning): time per step and for S steps and, against a trained run, the steps and training time until the
fine-tuned model matches the hypernetwork's ROUGE-L on the task."""

from __future__ import annotations

from typing import Any

import torch

from ..baselines import PerTaskTuner, demos_batch
from ..data.tasks import Task
from ..evaluation.metrics import rouge_l
from ..training.methods import HypernetMethod
from .measure import summary, timed
from .setup import Setup

FT_METHODS = ("prefix", "lora")  # in this order: LoRA last, as peft wraps the main model (undone per task)
LORA_RANK = 8


def _tuner(setup: Setup, kind: str, seed: int) -> PerTaskTuner:
    lr = setup.preset.lr_lora if kind == "lora" else setup.preset.lr_prefix
    return PerTaskTuner(setup.main, kind, lr, seed, prefix_length=setup.preset.prefix_length, lora_rank=LORA_RANK)


def _rouge(setup: Setup, predictions: torch.Tensor, instances) -> float:
    """Mean ROUGE-L of the decoded ``predictions`` (B x n_y token ids) against ``instances``' references."""
    texts = setup.tokenizer.batch_decode(predictions, skip_special_tokens=True)
    return sum(rouge_l(t.strip(), list(e.outputs)) for t, e in zip(texts, instances)) / len(instances)


def hypernet_rouge(setup: Setup, method: HypernetMethod, task: Task, instances) -> float:
    """ROUGE-L of ``method``'s adapted main model on ``instances`` (the task's parameters generated once)."""
    method.eval()
    adapted = method.adapt(setup.collator([(task, instances[:1])], with_labels=False).to(setup.device))
    batch = setup.collator([(task, instances)], with_labels=False).to(setup.device)
    return _rouge(setup, method.generate(batch, adapted), instances)


def fine_tuning(setup: Setup, kind: str, tasks: list[Task], steps: int, reach: dict[str, float] | None,
                eval_every: int, eval_instances: int, seed: int) -> dict[str, Any]:
    """Fine-tune each task from scratch for ``steps`` steps (a global warm-up step first, not counted).

    With ``reach`` ({task name: hypernetwork ROUGE-L}) evaluate every ``eval_every`` steps on ``eval_instances``
    of the task's instances and record the first step (and training time, evaluation excluded) that matches it.
    """
    device = setup.device
    warm = _tuner(setup, kind, seed)
    warm.step(demos_batch(setup.collator, tasks[0], device))
    warm.close()
    step_times, run_totals, per_task = [], [], []
    for index, task in enumerate(tasks):
        tuner = _tuner(setup, kind, seed + index + 1)
        batch = demos_batch(setup.collator, task, device)
        record: dict[str, Any] = {"task": task.name}
        goal = None if reach is None else reach.get(task.name)
        instances = task.instances[:eval_instances]
        query = setup.collator([(task, instances)], with_labels=False).to(device) if goal is not None else None
        elapsed = 0.0
        if goal is not None:
            score = _rouge(setup, tuner.generate(query, setup.max_new_tokens), instances)
            record.update({"hypernet_rougeL": goal, "step0_rougeL": score, "curve": [[0, 0.0, score]]})
            if score >= goal:
                record.update({"reached_step": 0, "reached_s": 0.0})
        for step in range(1, steps + 1):
            seconds, loss = timed(lambda: tuner.step(batch), device)
            step_times.append(seconds)
            elapsed += seconds
            if goal is not None and "reached_step" not in record and (step % eval_every == 0 or step == steps):
                score = _rouge(setup, tuner.generate(query, setup.max_new_tokens), instances)
                record["curve"].append([step, elapsed, score])
                if score >= goal:
                    record.update({"reached_step": step, "reached_s": elapsed})
        record["loss_last"] = loss
        record["steps_s"] = elapsed
        if goal is not None and "reached_step" not in record:
            record["reached_step"] = None
            record["reached"] = f"not reached in {steps} steps"
        run_totals.append(elapsed)
        per_task.append(record)
        tuner.close()
    result = {"trainable_parameters": None, "step": summary(step_times), "steps": steps,
              "s_steps": summary(run_totals), "tasks": len(tasks), "per_task": per_task,
              "train_examples": int(demos_batch(setup.collator, tasks[0], device).num_examples)}
    probe = _tuner(setup, kind, seed)
    result["trainable_parameters"] = sum(p.numel() for p in probe.params)
    # the trainable tensors, their gradients and AdamW's two moments: exact, unlike the RSS/CUDA peak
    result["trainable_state_mib"] = 4 * sum(p.numel() * p.element_size() for p in probe.params) / 2 ** 20
    result["lr"] = probe.optimizer.param_groups[0]["lr"]
    probe.close()
    if reach is not None:
        # a task the hypernetwork scores 0 on is reached trivially: counted apart, left out of the summaries
        scored = [r for r in per_task if r["hypernet_rougeL"] > 0]
        reached = [r for r in scored if r.get("reached_step") is not None]
        result["scored_tasks"] = len(scored)
        result["zero_target_tasks"] = len(per_task) - len(scored)
        result["reached_tasks"] = len(reached)
        if reached:
            result["reached_steps"] = summary([r["reached_step"] for r in reached])
            result["reached_time"] = summary([r["reached_s"] for r in reached])
    return result
