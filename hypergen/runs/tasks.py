"""A recipe's tasks, by split: the training tasks less the validation ones, the validation split, the held-out test
tasks (S-NI folders, P3, or the embedded family, written on first use to ``EMBEDDED_DIR``)."""

from __future__ import annotations

from pathlib import Path

from ..data.p3 import T0_HELD_OUT, T0_TRAIN_DATASETS, load_p3
from ..data.splits import as_evaluation_task, hold_out_validation
from ..data.synthetic import ensure_embedded_tasks
from ..data.tasks import Task, load_task_folder
from ..errors import HypergenError
from ..recipe import Recipe

EMBEDDED_DIR = Path(".cache/hypergen/embedded")


def data_folder(recipe: Recipe) -> Path:
    data = recipe.data
    if data.source == "embedded":
        return ensure_embedded_tasks(Path(data.path) if data.path else EMBEDDED_DIR, seed=data.embedded_seed)
    path = Path(data.path).expanduser()
    if not path.exists():
        raise HypergenError(f"data.path: {path} does not exist")
    return path


def load_tasks(recipe: Recipe, split: str, data_path: str | None = None, split_file: str | None = None,
               tokenizer=None) -> list[Task]:
    """The recipe's ``split`` tasks: "train" (the training split less the validation tasks), "validation" (held back
    from the training split by ``data.validation_tasks``, see :mod:`.data.splits`) or "test"; S-NI or embedded task
    folders, or P3 subsets. ``split_file`` replaces the test split's file list."""
    if split == "test":
        return _load_split(recipe, "test", data_path, split_file, tokenizer)
    train, validation = training_and_validation(recipe, data_path, tokenizer)
    if split == "train":
        return train
    if not validation:
        raise HypergenError("data.validation_tasks: not set; the recipe has no validation split (set a fraction of "
                            "the training tasks or their names)")
    return validation


def training_and_validation(recipe: Recipe, data_path: str | None = None,
                            tokenizer=None) -> tuple[list[Task], list[Task]]:
    """(tasks to train on, validation tasks): the training split, less and then only ``data.validation_tasks``
    (no validation tasks when it is not set). P3 validation subsets get fixed demos, and must have answer choices."""
    tasks = _load_split(recipe, "train", data_path, None, tokenizer)
    setting, p3 = recipe.data.validation_tasks, recipe.data.source == "p3"
    if setting is None:
        return tasks, []
    test_names: set[str] = set()
    if isinstance(setting, list) and not set(setting) <= {t.name for t in tasks}:  # say which are test tasks
        test_names = {t.name for t in _load_split(recipe, "test", data_path, None, tokenizer)}
    eligible = {t.name for t in tasks if all(e.choices for e in t.instances)} if p3 else None
    train, validation = hold_out_validation(tasks, setting, recipe.data.validation_seed, test_names, eligible)
    if p3:
        validation = [as_evaluation_task(t, recipe.data.num_positive) for t in validation]
    return train, validation


def _load_split(recipe: Recipe, split: str, data_path: str | None, split_file: str | None, tokenizer) -> list[Task]:
    if recipe.data.source == "p3":
        return load_p3_tasks(recipe, split, data_path, tokenizer)
    folder = Path(data_path) if data_path else data_folder(recipe)
    if not folder.exists():
        raise HypergenError(f"--data: {folder} does not exist")
    default_file = recipe.data.train_split_file if split == "train" else recipe.data.test_split_file
    tasks = load_task_folder(folder, split=split, split_name=recipe.data.split, split_file=split_file or default_file)
    if not tasks:
        raise HypergenError(f"{folder}: no {split} tasks found")
    return tasks


def load_p3_tasks(recipe: Recipe, split: str, data_path: str | None, tokenizer) -> list[Task]:
    data = recipe.data
    root = data_path or data.path
    if split == "train":
        count = (lambda text: len(tokenizer(text).input_ids)) if tokenizer is not None else (lambda t: len(t.split()))
        return load_p3(root, data.p3_train_datasets or T0_TRAIN_DATASETS, "train",
                       max_avg_input_tokens=data.p3_max_avg_input_tokens, count_tokens=count)
    return load_p3(root, data.p3_eval_datasets or T0_HELD_OUT.values(), "validation", shots=data.num_positive,
                   max_instances=data.eval_instances_per_task)
