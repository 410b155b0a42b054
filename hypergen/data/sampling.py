"""Seeded, resumable sampling of (task, queries) pairs for hypernetwork training."""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any, Sequence

from ..errors import HypergenError
from .tasks import Example, Task


class TaskSampler:
    """Draws tasks (with replacement) and, for each, ``queries_per_task`` of its instances.

    With ``proportional=True`` a task is drawn with probability proportional to its number of instances, otherwise
    uniformly. The queries of one draw are distinct instances; only a task with fewer instances than
    ``queries_per_task`` repeats some (all of its instances once, then random ones). Everything comes from one
    ``random.Random(seed)``, whose state :meth:`state_dict` saves as JSON-serialisable data.

    With ``max_instances_per_task`` (S-NI's ``max_num_instances_per_task``, 100 in Tk-Instruct) a task with more
    instances is sampled as if it had only that many: a fixed subset of them (:func:`capped`), so that proportional
    sampling does not let a few huge tasks dominate.

    With ``shots`` > 0 (P3's "16-Shots"), each draw's demos are ``shots`` other instances of the task, sampled
    anew at each draw and never including that draw's queries: the task is returned with them as its positives.
    """

    def __init__(self, tasks: Sequence[Task], seed: int, queries_per_task: int = 1, proportional: bool = True,
                 shots: int = 0, max_instances_per_task: int | None = None):
        if not tasks:
            raise ValueError("TaskSampler needs at least one task")
        if queries_per_task < 1:
            raise ValueError(f"queries_per_task must be >= 1, got {queries_per_task}")
        empty = [t.name for t in tasks if not t.instances]
        if empty:
            raise ValueError(f"tasks without instances cannot be sampled: {', '.join(empty)}")
        self.max_instances_per_task = max_instances_per_task
        self.tasks = [capped(t, max_instances_per_task) for t in tasks] if max_instances_per_task else list(tasks)
        self.queries_per_task = queries_per_task
        self.proportional = proportional
        self.shots = shots
        weights = [len(t.instances) if proportional else 1 for t in self.tasks]
        self._cum_weights = list(itertools.accumulate(weights))
        self._rng = random.Random(seed)

    def _queries(self, task: Task) -> list[Example]:
        n, k = len(task.instances), self.queries_per_task
        picks = self._rng.sample(range(n), min(n, k)) + [self._rng.randrange(n) for _ in range(k - n)]
        return [task.instances[i] for i in picks]

    def next_batch(self, num_tasks: int) -> list[tuple[Task, list[Example]]]:
        """``num_tasks`` draws of (task, its queries); the same task may appear more than once."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        indices = self._rng.choices(range(len(self.tasks)), cum_weights=self._cum_weights, k=num_tasks)
        draws = [(self.tasks[i], self._queries(self.tasks[i])) for i in indices]
        return [(self._with_shots(task, queries), queries) for task, queries in draws] if self.shots else draws

    def _with_shots(self, task: Task, queries: list[Example]) -> Task:
        """``task`` whose positives are ``shots`` of its other instances (never one of ``queries``)."""
        chosen = {id(q) for q in queries}
        pool = [i for i, example in enumerate(task.instances) if id(example) not in chosen]
        picks = self._rng.sample(pool, min(self.shots, len(pool)))
        return dataclasses.replace(task, positives=[task.instances[i] for i in picks])

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the RNG state plus what identifies the sampled population."""
        version, internal, gauss = self._rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "task_names": [t.name for t in self.tasks],
            "queries_per_task": self.queries_per_task,
            "proportional": self.proportional,
            "shots": self.shots,
            "max_instances_per_task": self.max_instances_per_task,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the sampler must have been built on the same tasks and settings."""
        mine = self.state_dict()
        for field in ("task_names", "queries_per_task", "proportional", "shots", "max_instances_per_task"):
            if state.get(field) != mine[field]:
                raise HypergenError(f"sampler state does not match this sampler: field '{field}' differs")
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))


def capped(task: Task, limit: int) -> Task:
    """``task`` with at most ``limit`` of its instances, in file order: a subset drawn from the task's name, so it
    is the same in every process and after a resume."""
    if len(task.instances) <= limit:
        return task
    keep = sorted(random.Random(task.name).sample(range(len(task.instances)), limit))
    return dataclasses.replace(task, instances=[task.instances[i] for i in keep])
