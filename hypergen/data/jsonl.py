"""The JSONL files a user hands to ``hypergen adapt --demos`` and ``hypergen predict --input``, read with errors
that name the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import HypergenError
from ..io import parse_json, read_text
from .tasks import Example, Task


def read_jsonl(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of ``path``; errors (unreadable bytes, invalid or too
    deeply nested JSON, non-finite numbers) name the file and the line."""
    for number, line in enumerate(read_text(Path(path), kind).splitlines(), start=1):
        if line.strip():
            yield number, parse_json(line, f"{path}: line {number}")


def read_demos_file(path: str | Path) -> Task:
    """A task from a JSONL demos file: at most one ``{"definition": ...}`` line and ``{"input", "output"}`` pairs
    (``output`` a string or a list of strings). The pairs become the task's positive examples."""
    path = Path(path)
    definition, pairs = None, []
    for number, item in read_jsonl(path, "demos file"):
        if isinstance(item, dict) and set(item) == {"definition"} and isinstance(item["definition"], str):
            if definition is not None:
                raise HypergenError(f"{path}: line {number} is a second definition; at most one is allowed")
            definition = item["definition"]
            continue
        output = item.get("output") if isinstance(item, dict) else None
        outputs = [output] if isinstance(output, str) else output
        if (not isinstance(item, dict) or set(item) != {"input", "output"} or not isinstance(item["input"], str)
                or not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs)):
            raise HypergenError(f"{path}: line {number}: expected {{\"definition\": text}} or "
                                "{\"input\": text, \"output\": text}")
        pairs.append(Example(item["input"], tuple(outputs)))
    if not pairs:
        raise HypergenError(f"{path}: no demonstration pairs; expected lines {{\"input\": ..., \"output\": ...}}")
    return Task(name=path.stem, definition=definition or "", positives=pairs, instances=[], source=str(path))


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
