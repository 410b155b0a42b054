"""The validation split: tasks held back from the training tasks, for periodic evaluation and ``hypergen sweep``.

The paper selects alpha from {1, 5, 10, 20} but does not say on what data; choosing it on the held-out test tasks
would leak them, so the choice is made on validation tasks carved from the *training* split (``data.validation_tasks``:
a fraction of the training tasks, drawn with ``data.validation_seed``, or their names). Validation tasks are never
sampled in training and are never test tasks.
"""

from __future__ import annotations

import dataclasses
import random

from ..errors import RecipeError
from .tasks import Task

WHERE = "data.validation_tasks"


def hold_out_validation(tasks: list[Task], setting: float | list[str], seed: int, test_names: set[str] = frozenset(),
                        eligible: set[str] | None = None) -> tuple[list[Task], list[Task]]:
    """Split the training ``tasks`` into (tasks to train on, validation tasks), both in the order of ``tasks``.

    ``setting``: a fraction (0 < f < 1) of the tasks, at least one, never all, drawn with ``random.Random(seed)``
    from ``eligible`` (default: every task), the same draw whatever else the recipe says; or task names, each of
    which must be a training task (a name in ``test_names`` is refused as a test task).
    """
    names = [t.name for t in tasks]
    if isinstance(setting, list):
        known = set(names)
        for name in setting:
            if name in test_names:
                raise RecipeError(f"{WHERE}: {name!r} is a test task; validation tasks come from the training split")
            if name not in known:
                raise RecipeError(f"{WHERE}: {name!r} is not a training task")
            if eligible is not None and name not in eligible:
                raise RecipeError(f"{WHERE}: {name!r} cannot be scored (rank classification needs answer_choices)")
        chosen = set(setting)
    else:
        pool = sorted(n for n in names if eligible is None or n in eligible)
        count = max(1, round(setting * len(pool)))
        if not pool or count >= len(names):
            raise RecipeError(f"{WHERE}: {setting} of {len(names)} training tasks ({len(pool)} eligible) leaves "
                              "no validation task or no task to train on")
        chosen = set(random.Random(seed).sample(pool, count))
    if len(chosen) >= len(names):
        raise RecipeError(f"{WHERE}: holds back every training task; at least one must remain to train on")
    return [t for t in tasks if t.name not in chosen], [t for t in tasks if t.name in chosen]


def as_evaluation_task(task: Task, shots: int) -> Task:
    """A P3 training task (no fixed demos) as a validation task: its first ``shots`` examples are the demos, the
    rest are scored (as :func:`~hypergen.data.p3.load_p3` does for a held-out subset without a training split)."""
    return dataclasses.replace(task, positives=task.instances[:shots], instances=task.instances[shots:])
