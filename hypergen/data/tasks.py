"""Load Super-NaturalInstructions (S-NI) task files and split lists.

A task file is a JSON object with (at least) ``Definition`` and ``Instances``; ``Positive Examples`` is optional.
The loader accepts the variations found in the official release: ``Definition`` as a list of strings (the first
is used, as S-NI's collator does) or a plain string; an instance ``output`` as a list of strings or one string;
instance keys ``input``/``output`` or ``Input``/``Output``; no ``id`` fields; any other fields (languages, ``URL``
possibly ``null``, notes) are ignored. Every problem raises :class:`~hypergen.errors.TaskFormatError` with a one-line
message naming the file, the field, and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HypergenError, TaskFormatError
from ..io import read_text


@dataclass(frozen=True)
class Example:
    """One input with one or more reference outputs (and, for multiple-choice data, its answer choices)."""

    input: str
    outputs: tuple[str, ...]
    choices: tuple[str, ...] = ()


@dataclass
class Task:
    """One S-NI task: its definition, positive (demonstration) examples and evaluation/training instances."""

    name: str
    definition: str
    positives: list[Example]
    instances: list[Example]
    source: str


def _fail(path: Path | str, message: str) -> TaskFormatError:
    return TaskFormatError(f"{path}: {message}")


def _definition(path: Path, data: dict) -> str:
    if "Definition" not in data:
        raise _fail(path, "field 'Definition' is missing; expected a non-empty string or list of strings")
    value = data["Definition"]
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, "field 'Definition' is empty or not text; expected a non-empty string or list of strings")
    return value.strip()


def _example(path: Path, field: str, index: int, item: Any) -> Example:
    where = f"{field}[{index}]"
    if not isinstance(item, dict):
        raise _fail(path, f"field '{where}' is {type(item).__name__}; expected an object with input and output")
    text = item.get("input", item.get("Input"))
    if not isinstance(text, str):
        raise _fail(path, f"field '{where}.input' is missing or not a string; expected the input text")
    out = item.get("output", item.get("Output"))
    outputs = [out] if isinstance(out, str) else out
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
        raise _fail(path, f"field '{where}.output' is missing or invalid; expected a string or non-empty list of strings")
    return Example(input=text, outputs=tuple(outputs))


def _examples(path: Path, data: dict, field: str, required: bool) -> list[Example]:
    value = data.get(field, None if required else [])
    if required and value is None:
        raise _fail(path, f"field '{field}' is missing; expected a non-empty list of examples")
    if not isinstance(value, list):
        raise _fail(path, f"field '{field}' is {type(value).__name__}; expected a list of examples")
    if required and not value:
        raise _fail(path, f"field '{field}' is an empty list; expected at least one example")
    return [_example(path, field, i, item) for i, item in enumerate(value)]


def _read(path: Path, what: str) -> str:
    """The file's text (UTF-8, or with a byte-order mark UTF-8/16/32); any failure as a TaskFormatError."""
    try:
        return read_text(path, what)
    except TaskFormatError:
        raise
    except HypergenError as exc:
        raise TaskFormatError(str(exc)) from None


def load_task(path: str | Path) -> Task:
    """Read one S-NI task file; the task's name is the file name without ``.json``."""
    path = Path(path)
    text = _read(path, "task file")
    if not text.strip():
        raise _fail(path, "file is empty; expected a JSON object with 'Definition' and 'Instances'")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _fail(path, "nested too deeply to read (hundreds of levels)") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise _fail(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(path, f"top level is a JSON {type(data).__name__}; expected an object with 'Definition' and 'Instances'")
    return Task(
        name=path.stem,
        definition=_definition(path, data),
        positives=_examples(path, data, "Positive Examples", required=False),
        instances=_examples(path, data, "Instances", required=True),
        source=str(path),
    )


def read_split(path: str | Path) -> list[str]:
    """Task names in a split file, one per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "split file not found; expected one task name per line")
    lines = _read(path, "split file").splitlines()
    names = [line.split("#", 1)[0].strip() for line in lines]
    return [name.removesuffix(".json") for name in names if name]


def load_task_folder(
    data_dir: str | Path,
    split: str = "train",
    split_name: str = "default",
    split_file: str | Path | None = None,
) -> list[Task]:
    """Load the tasks of one split from an S-NI-style folder.

    Tasks are ``data_dir/tasks/<name>.json`` (or ``data_dir/<name>.json`` when ``data_dir`` is itself a folder of
    task files), for each name in ``split_file`` or else ``data_dir/splits/<split_name>/<split>_tasks.txt``. With
    neither a ``splits`` folder nor ``split_file``, every task file is loaded, sorted by name, whatever ``split``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise _fail(data_dir, "task folder not found")
    tasks_dir = data_dir / "tasks" if (data_dir / "tasks").is_dir() else data_dir
    if split_file is None and (data_dir / "splits").is_dir():
        split_file = data_dir / "splits" / split_name / f"{split}_tasks.txt"
    if split_file is None:
        files = sorted(tasks_dir.glob("*.json"), key=lambda p: p.name)
        files = [f for f in files if f.name != "manifest.json"]
        if not files:
            raise _fail(tasks_dir, "folder holds no task files; expected <name>.json files in S-NI format")
        return [load_task(f) for f in files]
    names = read_split(split_file)
    if not names:
        raise _fail(split_file, "split file lists no tasks; expected one task name per line")
    tasks = []
    for name in names:
        file = tasks_dir / f"{name}.json"
        if not file.is_file():
            raise _fail(split_file, f"lists task '{name}' but its file {file} does not exist")
        tasks.append(load_task(file))
    return tasks


def with_demos_of_other_tasks(tasks: list[Task], shift: int = 1) -> list[Task]:
    """The demos control: each task keeps its name and instances but gets the definition and positive examples of
    the task ``shift`` places later in the list (cyclically). A method that adapts from the demos scores lower on
    these; one whose score does not drop is not using them."""
    if len(tasks) < 2:
        raise ValueError("the demos control needs at least two tasks (each borrows another task's demos)")
    n = len(tasks)
    return [Task(task.name, tasks[(i + shift) % n].definition, list(tasks[(i + shift) % n].positives),
                 task.instances, task.source) for i, task in enumerate(tasks)]
