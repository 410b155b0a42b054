"""Evaluation: each task's parameters are generated once from its fixed demos, then every instance is decoded
greedily with them; ROUGE-L and exact match overall and per task."""

from __future__ import annotations

from typing import Any, Iterator

from tqdm.auto import tqdm

from ..data.collate import Collator
from ..data.tasks import Example, Task
from .metrics import score_predictions


def evaluate(method, tasks: list[Task], collator: Collator, device, max_instances: int, batch_size: int,
             progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Returns ``(scores, records)``; records are {task, input, prediction, references} per instance.

    Tasks whose instances carry answer choices (P3) are scored by rank classification instead (accuracy).
    """
    if tasks and all(example.choices for task in tasks for example in task.instances[:1]):
        from ..data.p3 import held_out_dataset
        from .rank import evaluate_choices

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


def task_chunks(method, tasks: list[Task], collator: Collator, device, max_instances: int, batch_size: int,
                progress: bool = True) -> Iterator[tuple[Task, Any, list[Example]]]:
    """(task, its adapted parameters, a chunk of up to ``batch_size`` of its first ``max_instances`` instances).

    The parameters are generated once per task, from its fixed demos, and reused for all its chunks.
    """
    method.eval()
    bar = tqdm(total=sum(min(len(t.instances), max_instances) for t in tasks), desc="eval", disable=not progress,
               leave=False)
    for task in tasks:
        instances = task.instances[:max_instances]
        adapted = method.adapt(collator([(task, instances[:1])], with_labels=False).to(device))  # once per task
        for start in range(0, len(instances), batch_size):
            chunk = instances[start:start + batch_size]
            yield task, adapted, chunk
            bar.update(len(chunk))
    bar.close()
