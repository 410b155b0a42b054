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


def read_queries(path: str | Path) -> list[str]:
    """The ``input`` of each line of a JSONL file (``{"input": text}``, other keys ignored)."""
    path = Path(path)
    queries = []
    for number, item in read_jsonl(path, "input file"):
        if not isinstance(item, dict) or not isinstance(item.get("input"), str):
            raise HypergenError(f"{path}: line {number}: expected an object with a string 'input'")
        queries.append(item["input"])
    if not queries:
        raise HypergenError(f"{path}: no queries; expected lines {{\"input\": ...}}")
    return queries
