"""The JSONL files a user hands to ``hypergen adapt --demos`` and ``hypergen predict --input``, read with errors
that name the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import HypergenError
from ..io import parse_json, read_text
from .demos import task_from_demos
from .tasks import Task


def read_jsonl(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of ``path``; errors (unreadable bytes, invalid or too
    deeply nested JSON, non-finite numbers) name the file and the line."""
    for number, line in enumerate(read_text(Path(path), kind).splitlines(), start=1):
        if line.strip():
            yield number, parse_json(line, f"{path}: line {number}")


def read_demos_file(path: str | Path) -> Task:
    """A task from a JSONL demos file: at most one ``{"definition": ...}`` line and ``{"input", "output"}`` pairs
    (``output`` a string or a list of strings), parsed by :func:`hypergen.data.demos.task_from_demos`."""
    path = Path(path)
    lines = ((f"line {number}", item) for number, item in read_jsonl(path, "demos file"))
    return task_from_demos(lines, str(path), path.stem)


def read_adapter_queries(path: str | Path, adapter_names: list[str]) -> tuple[list[str], list[str]]:
    """``(adapter name, input)`` of each line of a JSONL file for ``hypergen predict`` with the adapters
    ``adapter_names``: ``{"input": text, "adapter": name}`` (``"task"`` is read as the same key). With one adapter
    every line is its (other keys ignored, as before several adapters existed). Returns the names and the inputs,
    in the file's order; errors name the file and the line."""
    path = Path(path)
    names, queries = [], []
    for number, item in read_jsonl(path, "input file"):
        where = f"{path}: line {number}"
        if not isinstance(item, dict) or not isinstance(item.get("input"), str):
            raise HypergenError(f"{where}: expected an object with a string 'input'")
        if len(adapter_names) == 1:
            names.append(adapter_names[0])
            queries.append(item["input"])
            continue
        given = [item[key] for key in ("adapter", "task") if key in item]
        if not all(isinstance(name, str) for name in given):
            raise HypergenError(f"{where}: 'adapter' must be a string naming an adapter, got {given!r}")
        if len(set(given)) > 1:
            raise HypergenError(f"{where}: 'adapter' and 'task' name different adapters {given}")
        if not given:
            raise HypergenError(f"{where}: names no adapter; with several adapters each line needs \"adapter\": one "
                                f"of {', '.join(adapter_names)}")
        name = given.pop()
        if name not in adapter_names:
            raise HypergenError(f"{where}: unknown adapter {name!r}; --adapter gave {', '.join(adapter_names)}")
        names.append(name)
        queries.append(item["input"])
    if not queries:
        raise HypergenError(f"{path}: no queries; expected lines {{\"input\": ...}}")
    return names, queries
