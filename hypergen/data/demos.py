"""A task from demonstration items: at most one ``{"definition": text}`` and ``{"input": text, "output": text or
[texts]}`` pairs, the pairs becoming the task's positive examples. The one parser behind ``hypergen adapt --demos
FILE.jsonl`` (items are the file's lines) and ``HyperNetwork.adapt([...])`` in Python (items are list entries)."""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import HypergenError
from .tasks import Example, Task


def task_from_demos(items: Iterable[tuple[str, Any]], where: str, name: str,
                    definition: str | None = None) -> Task:
    """``items``: ``(location, item)`` pairs, the location naming the item in errors ("line 3", "demos[2]");
    ``where`` names the whole (a file, "demos"). ``definition`` may also be given here instead of as an item."""
    pairs = []
    for location, item in items:
        if isinstance(item, dict) and set(item) == {"definition"} and isinstance(item["definition"], str):
            if definition is not None:
                raise HypergenError(f"{where}: {location} is a second definition; at most one is allowed")
            definition = item["definition"]
            continue
        output = item.get("output") if isinstance(item, dict) else None
        outputs = [output] if isinstance(output, str) else output
        if (not isinstance(item, dict) or set(item) != {"input", "output"} or not isinstance(item["input"], str)
                or not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs)):
            raise HypergenError(f"{where}: {location}: expected {{\"definition\": text}} or "
                                "{\"input\": text, \"output\": text}")
        pairs.append(Example(item["input"], tuple(outputs)))
    if not pairs:
        raise HypergenError(f"{where}: no demonstration pairs; expected {{\"input\": ..., \"output\": ...}} items")
    return Task(name=name, definition=definition or "", positives=pairs, instances=[], source=where)
