"""The embedded demo task family: add a secret symbol to a short word, number or list, as S-NI task files.

Every task hides two parameters that only its demonstrations reveal: a **symbol** c and an **operation**, append
(``"bd"`` -> ``"bdx"``) or prepend (``"bd"`` -> ``"xbd"``). The definition describes only the format, never c or
the operation, so the query alone cannot determine the answer. Formats (the task name says which):

* ``word``:   letters a-h, symbol any letter a-z:      ``"bd"``     -> ``"bdx"``
* ``number``: digits 0-9, symbol any digit:            ``"37"``     -> ``"374"``
* ``list``:   letters a-h, symbol any letter a-z:      ``"[b, d]"`` -> ``"[x, b, d]"``

Held-out tasks are (format, operation, symbol) combinations never trained on: for a held-out "append x" word task,
"prepend x" words and "append" words with other symbols are trained, never "append x" words. So a held-out score
above the frozen model's is adaptation, not memory. Inputs and outputs are a few characters long, so a tiny
byte-level T5 learns them on a CPU in minutes.
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .tasks import Task

MANIFEST = "manifest.json"
FORMAT_VERSION = 3
OPERATIONS = ("append", "prepend")


@dataclass(frozen=True)
class Family:
    """One format: the symbols queries use, the secret symbols, and how a symbol sequence is written."""

    name: str
    sources: str
    symbols: str
    definition: str
    render: Callable[[list[str]], str]
    parse: Callable[[str], list[str]]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("word", "abcdefgh", string.ascii_lowercase,
               "Add the secret letter to the word, at the secret end.", "".join, list),
        Family("number", string.digits, string.digits,
               "Add the secret digit to the number, at the secret end.", "".join, list),
        Family("list", "abcdefgh", string.ascii_lowercase,
               "Add the secret letter to the list, at the secret end.",
               lambda s: "[" + ", ".join(s) + "]", lambda t: [x for x in t.strip("[]").split(", ") if x]),
    )
}


def family_of(task_name: str) -> Family:
    """The family of a synthetic task, read from its name (``task_<family>_<index>``)."""
    for name, family in FAMILIES.items():
        if task_name.startswith(f"task_{name}_"):
            return family
    raise ValueError(f"{task_name!r} is not a synthetic task name")


def apply_rule(symbols: list[str], operation: str, symbol: str) -> list[str]:
    return symbols + [symbol] if operation == "append" else [symbol] + symbols


def _reveals(source: list[str], symbol: str) -> bool:
    """Whether an example with this input tells append from prepend (it does unless all symbols are equal)."""
    return apply_rule(source, "append", symbol) != apply_rule(source, "prepend", symbol)


def task_rule(task: Task) -> tuple[str, str]:
    """(operation, symbol) that a synthetic task's positive examples reveal."""
    family = family_of(task.name)
    for positive in task.positives:
        source, target = family.parse(positive.input), family.parse(positive.outputs[0])
        if _reveals(source, target[-1]) or _reveals(source, target[0]):
            return ("append", target[-1]) if target[:-1] == source else ("prepend", target[0])
    raise ValueError(f"{task.name}: no positive example tells append from prepend")


def _task_json(rng: random.Random, family: Family, operation: str, symbol: str, num_instances: int,
               num_positive: int) -> dict:
    def example() -> dict:
        source = rng.choices(family.sources, k=rng.randint(1, 2))
        return {"input": family.render(source), "output": family.render(apply_rule(source, operation, symbol))}

    positives = [example() for _ in range(num_positive)]
    while not any(_reveals(family.parse(p["input"]), symbol) for p in positives):  # demos must reveal the rule
        positives[-1] = example()
    for positive in positives:
        positive["explanation"] = f"The secret symbol is {symbol}; it is added at the {operation} end."
    return {
        "Contributors": ["hypergen"],
        "Source": ["hypergen synthetic"],
        "Categories": ["Symbol Insertion"],
        "Definition": [family.definition],
        "Positive Examples": positives,
        "Negative Examples": [],
        "Instances": [{"input": e["input"], "output": [e["output"]]} for e in (example() for _ in range(num_instances))],
    }


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(text.encode("utf-8"))
    os.replace(tmp, path)


def _params(seed: int, held_out_fraction: float, instances_per_task: int, num_positive: int) -> dict:
    return {"format": "hypergen-synthetic-affix", "version": FORMAT_VERSION, "seed": seed,
            "held_out_fraction": held_out_fraction, "instances_per_task": instances_per_task,
            "num_positive": num_positive}


def write_embedded_tasks(out_dir: str | Path, seed: int = 0, held_out_fraction: float = 0.25,
                         instances_per_task: int = 32, num_positive: int = 4) -> Path:
    """Write ``out_dir/tasks/<name>.json``, ``out_dir/splits/default/{train,test}_tasks.txt`` and a manifest.

    One task per (format, operation, symbol): 124 in all. For a ``held_out_fraction`` of each format's symbols,
    one of the two operations (chosen at random) is held out; the other stays in training. Same arguments, same
    bytes.
    """
    if not 0 < held_out_fraction < 1 or instances_per_task < 1 or num_positive < 1:
        raise ValueError("need 0 < held_out_fraction < 1, instances_per_task >= 1 and num_positive >= 1")
    out_dir = Path(out_dir)
    tasks_dir, split_dir = out_dir / "tasks", out_dir / "splits" / "default"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    split_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a manifest marks a complete folder

    rng = random.Random(seed)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    index = 0
    for family in FAMILIES.values():
        held = rng.sample(family.symbols, max(1, round(held_out_fraction * len(family.symbols))))
        held_op = {symbol: rng.choice(OPERATIONS) for symbol in held}
        for symbol in family.symbols:
            for operation in OPERATIONS:
                name = f"task_{family.name}_{index:04d}"
                index += 1
                task = _task_json(rng, family, operation, symbol, instances_per_task, num_positive)
                _write_atomic(tasks_dir / f"{name}.json", json.dumps(task, indent=2, ensure_ascii=False) + "\n")
                splits["test" if held_op.get(symbol) == operation else "train"].append(name)
    for split, names in splits.items():
        _write_atomic(split_dir / f"{split}_tasks.txt", "".join(f"{name}\n" for name in names))
    params = _params(seed, held_out_fraction, instances_per_task, num_positive)
    _write_atomic(out_dir / MANIFEST, json.dumps(params, indent=2) + "\n")
    return out_dir


def ensure_embedded_tasks(out_dir: str | Path, seed: int = 0, held_out_fraction: float = 0.25,
                          instances_per_task: int = 32, num_positive: int = 4) -> Path:
    """Like :func:`write_embedded_tasks`, but reuse ``out_dir`` when its manifest says it holds these tasks."""
    out_dir = Path(out_dir)
    wanted = _params(seed, held_out_fraction, instances_per_task, num_positive)
    try:
        current = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    splits_ok = all((out_dir / "splits" / "default" / f"{s}_tasks.txt").is_file() for s in ("train", "test"))
    if current == wanted and splits_ok:
        return out_dir
    return write_embedded_tasks(out_dir, seed, held_out_fraction, instances_per_task, num_positive)
