"""The evaluation cycle both scorers share (generation in evaluate.py, rank classification in rank.py): each task's
parameters generated once from its fixed demos, then its instances in chunks."""

from __future__ import annotations

from typing import Any, Iterator

from tqdm.auto import tqdm

from ..data.collate import Collator
from ..data.tasks import Example, Task


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
