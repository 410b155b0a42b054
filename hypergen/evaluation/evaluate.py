"""Evaluation: each task's parameters are generated once from its fixed demos, then every instance is decoded
greedily with them; ROUGE-L and exact match overall and per task."""

from __future__ import annotations

from typing import Any

from ..data.collate import Collator
from ..data.p3 import held_out_dataset
from ..data.tasks import Task
from .chunks import task_chunks
from .metrics import score_predictions
from .rank import evaluate_choices


def evaluate(method, tasks: list[Task], collator: Collator, device, max_instances: int, batch_size: int,
             progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Returns ``(scores, records)``; records are {task, input, prediction, references} per instance.

    Tasks whose instances carry answer choices (P3) are scored by rank classification instead (accuracy).
    """
    if tasks and all(example.choices for task in tasks for example in task.instances[:1]):
        return evaluate_choices(method, tasks, collator, device, max_instances, batch_size,
                                group_of=held_out_dataset, progress=progress)
    records: list[dict[str, Any]] = []
    tokenizer = collator.tokenizer
    for task, adapted, chunk in task_chunks(method, tasks, collator, device, max_instances, batch_size, progress):
        batch = collator([(task, chunk)], with_labels=False, demos_in_input=method.demos_in_input).to(device)
        output = method.generate(batch, adapted)
        for example, text in zip(chunk, tokenizer.batch_decode(output, skip_special_tokens=True)):
            records.append({"task": task.name, "input": example.input, "prediction": text.strip(),
                            "references": list(example.outputs)})
    return score_predictions(records), records
