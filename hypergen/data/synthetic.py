"""The embedded demo task family: wrap a short word, number or list in two secret symbols, as S-NI task files.

Every task hides two parameters that only its demonstrations reveal: a **left** symbol and a **right** symbol,
added at the two ends of the input (``"bd"`` -> ``"xbdy"``). The definition describes only the format, never the
symbols, so the query alone cannot determine the answer. Formats (the task name says which):

* ``word``:   letters a-h, symbols any letters a-z:    ``"bd"``     -> ``"xbdy"``
* ``number``: digits 0-9, symbols any digits:          ``"37"``     -> ``"4371"``
* ``list``:   letters a-h, symbols any letters a-z:    ``"[b, d]"`` -> ``"[x, b, d, y]"``

There is one task per (format, left, right): 26 * 26 + 10 * 10 + 26 * 26 = 1452, far more than a hypernetwork can
memorise in a demo's minutes, so it has to learn to read the demos. Held-out tasks are (left, right) pairs never
trained on, while each of their symbols is trained on both sides; a held-out score above the frozen main model's
is adaptation, not memory. Inputs and outputs are a few characters long, so a tiny byte-level T5 learns them on a
CPU in minutes.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..io import atomic_write_text
from .tasks import Task

MANIFEST = "manifest.json"
FORMAT_VERSION = 4


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
               "Add the secret letters at both ends of the word.", "".join, list),
        Family("number", string.digits, string.digits,
               "Add the secret digits at both ends of the number.", "".join, list),
        Family("list", "abcdefgh", string.ascii_lowercase,
               "Add the secret letters at both ends of the list.",
               lambda s: "[" + ", ".join(s) + "]", lambda t: [x for x in t.strip("[]").split(", ") if x]),
    )
}


def family_of(task_name: str) -> Family:
    """The family of a synthetic task, read from its name (``task_<family>_<index>``)."""
    for name, family in FAMILIES.items():
        if task_name.startswith(f"task_{name}_"):
            return family
    raise ValueError(f"{task_name!r} is not a synthetic task name")


def apply_rule(symbols: list[str], left: str, right: str) -> list[str]:
    return [left, *symbols, right]


def task_rule(task: Task) -> tuple[str, str]:
    """(left, right) symbols that a synthetic task's first positive example reveals."""
    family = family_of(task.name)
    target = family.parse(task.positives[0].outputs[0])
    return target[0], target[-1]


def _task_json(rng: random.Random, family: Family, left: str, right: str, num_instances: int,
               num_positive: int) -> dict:
    def example() -> dict:
        source = rng.choices(family.sources, k=rng.randint(1, 2))
        return {"input": family.render(source), "output": family.render(apply_rule(source, left, right))}

    positives = [dict(example(), explanation=f"{left} is added on the left and {right} on the right.")
                 for _ in range(num_positive)]
    return {
        "Contributors": ["hypergen"],
        "Source": ["hypergen synthetic"],
        "Categories": ["Symbol Insertion"],
        "Definition": [family.definition],
        "Positive Examples": positives,
        "Negative Examples": [],
        "Instances": [{"input": e["input"], "output": [e["output"]]} for e in (example() for _ in range(num_instances))],
    }


def _params(seed: int, held_out_fraction: float, instances_per_task: int, num_positive: int) -> dict:
    return {"format": "hypergen-synthetic-wrap", "version": FORMAT_VERSION, "seed": seed,
            "held_out_fraction": held_out_fraction, "instances_per_task": instances_per_task,
            "num_positive": num_positive}


def write_embedded_tasks(out_dir: str | Path, seed: int = 0, held_out_fraction: float = 0.02,
                         instances_per_task: int = 16, num_positive: int = 4) -> Path:
    """Write ``out_dir/tasks/<name>.json``, ``out_dir/splits/default/{train,test}_tasks.txt`` and a manifest.

    One task per (format, left, right). A ``held_out_fraction`` of each format's pairs with two different symbols
    is held out, chosen so that every held-out symbol is still trained on both sides. Same arguments, same bytes.
    """
    if not 0 < held_out_fraction < 0.5 or instances_per_task < 1 or num_positive < 1:
        raise ValueError("need 0 < held_out_fraction < 0.5, instances_per_task >= 1 and num_positive >= 1")
    out_dir = Path(out_dir)
    tasks_dir, split_dir = out_dir / "tasks", out_dir / "splits" / "default"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    split_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a manifest marks a complete folder

    rng = random.Random(seed)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    index = 0
    for family in FAMILIES.values():
        pairs = [(a, b) for a in family.symbols for b in family.symbols]
        candidates = [(a, b) for a, b in pairs if a != b]
        held = set(rng.sample(candidates, max(1, round(held_out_fraction * len(pairs)))))
        for left, right in pairs:
            name = f"task_{family.name}_{index:04d}"
            index += 1
            task = _task_json(rng, family, left, right, instances_per_task, num_positive)
            atomic_write_text(tasks_dir / f"{name}.json", json.dumps(task, indent=2, ensure_ascii=False) + "\n")
            splits["test" if (left, right) in held else "train"].append(name)
    for split, names in splits.items():
        atomic_write_text(split_dir / f"{split}_tasks.txt", "".join(f"{name}\n" for name in names))
    params = _params(seed, held_out_fraction, instances_per_task, num_positive)
    atomic_write_text(out_dir / MANIFEST, json.dumps(params, indent=2) + "\n")
    return out_dir


def ensure_embedded_tasks(out_dir: str | Path, seed: int = 0, held_out_fraction: float = 0.02,
                          instances_per_task: int = 16, num_positive: int = 4) -> Path:
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
