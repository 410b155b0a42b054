"""Task data: S-NI task files and splits, the Def+kPos text encoding, task sampling and the synthetic demo tasks."""

from .format import demos_text, query_text
from .sampling import TaskSampler
from .synthetic import ensure_embedded_tasks, write_embedded_tasks
from .tasks import Example, Task, load_task, load_task_folder, read_split

__all__ = [
    "Example", "Task", "TaskSampler", "demos_text", "ensure_embedded_tasks", "load_task", "load_task_folder",
    "query_text", "read_split", "write_embedded_tasks",
]
