"""Rank classification (P3): each answer choice scored by the main model's log-likelihood with the task's
generated parameters; the highest wins. Accuracy per subset, per held-out task (mean over its subsets), overall
(mean over tasks)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch

from ..data.collate import Collator
from ..data.tasks import Example, Task
from .chunks import task_chunks


def rank_choices(method, task: Task, examples: list[Example], collator: Collator, device, adapted) -> list[int]:
    """Index of the highest-likelihood choice for each example (sum of the choice's token log-probabilities)."""
    rows = [Example(example.input, (choice,)) for example in examples for choice in example.choices]
    batch = collator([(task, rows)], demos_in_input=method.demos_in_input).to(device)
    scores = method.score(batch, adapted).cpu()
    picks, start = [], 0
    for example in examples:
        picks.append(int(torch.argmax(scores[start:start + len(example.choices)])))
        start += len(example.choices)
    return picks


def evaluate_choices(method, tasks: list[Task], collator: Collator, device, max_instances: int, batch_size: int,
                     group_of: Callable[[str], str] = lambda name: name,
                     progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    for task, adapted, chunk in task_chunks(method, tasks, collator, device, max_instances, batch_size, progress):
        for example, pick in zip(chunk, rank_choices(method, task, chunk, collator, device, adapted)):
            prediction = example.choices[pick]
            records.append({"task": task.name, "input": example.input, "prediction": prediction,
                            "references": list(example.outputs), "correct": prediction == example.outputs[0]})
    return accuracy_scores(records, group_of), records


def accuracy_scores(records: list[dict[str, Any]], group_of: Callable[[str], str]) -> dict[str, Any]:
    per_subset: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        per_subset[record["task"]].append(record["correct"])
    subsets = {name: {"accuracy": 100.0 * sum(v) / len(v), "instances": len(v)}
               for name, v in sorted(per_subset.items())}
    groups: dict[str, list[float]] = defaultdict(list)
    for name, score in subsets.items():
        groups[group_of(name)].append(score["accuracy"])
    per_group = {name: sum(v) / len(v) for name, v in sorted(groups.items())}
    overall = sum(per_group.values()) / len(per_group) if per_group else 0.0
    return {"overall": {"accuracy": overall, "instances": len(records)}, "per_group": per_group,
            "per_task": subsets}
