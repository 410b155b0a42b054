"""The embedded demo task family: secret symbol substitutions, written as S-NI task files.

Every task hides a **key**: four source symbols mapped to four distinct target symbols. The definition describes
only the family; the ``Positive Examples`` are one example per source symbol, so Def+4Pos reveals the whole key
and a model can only solve a held-out task by reading its demonstrations. Instances map inputs of one or two
source symbols. Inputs and outputs are a few characters long, so a tiny byte-level T5 learns them on a CPU.

Families (the task name says which): ``letter_key`` (``"bd"`` -> ``"xm"``), ``digit_key`` (``"3 7"`` -> ``"1 4"``)
and ``list_key`` (``"[b, d]"`` -> ``"[x, m]"``). Held-out keys never equal a training key, as mappings.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .tasks import Task

KEY_SIZE = 4
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Family:
    """One kind of substitution task: which symbols it maps and how a symbol sequence is written."""

    name: str
    sources: str
    targets: str
    definition: str
    render: Callable[[list[str]], str]
    parse: Callable[[str], list[str]]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("letter_key", "abcdefgh", string.ascii_lowercase,
               "Replace each letter of the input by its secret code letter.", "".join, list),
        Family("digit_key", string.digits, string.digits,
               "Replace each digit of the input by its secret code digit.", " ".join, str.split),
        Family("list_key", "abcdefgh", string.ascii_lowercase,
               "Replace each letter of the input list by its secret code letter.",
               lambda s: "[" + ", ".join(s) + "]", lambda t: [x for x in t.strip("[]").split(", ") if x]),
    )
}


def family_of(task_name: str) -> Family:
    """The family of a synthetic task, read from its name (``task_<family>_<index>``)."""
    for name, family in FAMILIES.items():
        if task_name.startswith(f"task_{name}_"):
            return family
    raise ValueError(f"{task_name!r} is not a synthetic task name")


def task_key(task: Task) -> dict[str, str]:
    """The key a synthetic task's positive examples reveal (source symbol -> target symbol)."""
    family = family_of(task.name)
    return {family.parse(p.input)[0]: family.parse(p.outputs[0])[0] for p in task.positives}


def _draw_key(rng: random.Random, family: Family) -> dict[str, str]:
    sources = sorted(rng.sample(family.sources, KEY_SIZE))
    return dict(zip(sources, rng.sample(family.targets, KEY_SIZE)))


def _task_json(rng: random.Random, family: Family, key: dict[str, str], num_instances: int) -> dict:
    def example(symbols: tuple[str, ...]) -> dict:
        return {"input": family.render(list(symbols)), "output": family.render([key[s] for s in symbols])}

    positives = [dict(example((s,)), explanation=f"{s} is replaced by {key[s]}.") for s in key]
    # Every 1- and 2-symbol input once, in shuffled rounds, until there are enough instances.
    inputs = [(s,) for s in key] + list(itertools.product(key, repeat=2))
    chosen: list[tuple[str, ...]] = []
    while len(chosen) < num_instances:
        chosen += rng.sample(inputs, len(inputs))
    instances = [example(symbols) for symbols in chosen[:num_instances]]
    return {
        "Contributors": ["hypergen"],
        "Source": ["hypergen synthetic"],
        "Categories": ["Symbol Substitution"],
        "Definition": [family.definition],
        "Positive Examples": positives,
        "Negative Examples": [],
        "Instances": [{"input": i["input"], "output": [i["output"]]} for i in instances],
    }


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(text.encode("utf-8"))
    os.replace(tmp, path)


def _params(seed: int, num_train_tasks: int, num_test_tasks: int, instances_per_task: int) -> dict:
    return {"format": "hypergen-synthetic-keys", "version": FORMAT_VERSION, "seed": seed,
            "num_train_tasks": num_train_tasks, "num_test_tasks": num_test_tasks,
            "instances_per_task": instances_per_task}


def write_embedded_tasks(out_dir: str | Path, seed: int = 0, num_train_tasks: int = 300, num_test_tasks: int = 24,
                         instances_per_task: int = 32) -> Path:
    """Write ``out_dir/tasks/<name>.json``, ``out_dir/splits/default/{train,test}_tasks.txt`` and a manifest.

    Families alternate over both splits, so the test tasks are spread over them. Every key is distinct from
    every other (as a mapping, across families too); same arguments, same bytes.
    """
    if num_train_tasks < 1 or num_test_tasks < 0 or instances_per_task < 1:
        raise ValueError("need num_train_tasks >= 1, num_test_tasks >= 0 and instances_per_task >= 1")
    out_dir = Path(out_dir)
    tasks_dir, split_dir = out_dir / "tasks", out_dir / "splits" / "default"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    split_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a manifest marks a complete folder

    rng = random.Random(seed)
    families = list(FAMILIES.values())
    seen: set[frozenset] = set()
    splits: dict[str, list[tuple[str, dict[str, str]]]] = {"train": [], "test": []}
    for index in range(num_train_tasks + num_test_tasks):
        split = "train" if index < num_train_tasks else "test"
        family = families[(index if split == "train" else index - num_train_tasks) % len(families)]
        key = _draw_key(rng, family)
        while frozenset(key.items()) in seen:
            key = _draw_key(rng, family)
        seen.add(frozenset(key.items()))
        name = f"task_{family.name}_{index:04d}"
        task = _task_json(rng, family, key, instances_per_task)
        _write_atomic(tasks_dir / f"{name}.json", json.dumps(task, indent=2, ensure_ascii=False) + "\n")
        splits[split].append((name, key))

    train_keys = {frozenset(key.items()) for _, key in splits["train"]}
    leaked = [name for name, key in splits["test"] if frozenset(key.items()) in train_keys]
    if leaked:
        raise RuntimeError(f"held-out tasks share a training key: {', '.join(leaked)}")
    for split, entries in splits.items():
        _write_atomic(split_dir / f"{split}_tasks.txt", "".join(f"{name}\n" for name, _ in entries))
    params = _params(seed, num_train_tasks, num_test_tasks, instances_per_task)
    _write_atomic(out_dir / MANIFEST, json.dumps(params, indent=2) + "\n")
    return out_dir


def ensure_embedded_tasks(out_dir: str | Path, seed: int = 0, num_train_tasks: int = 300, num_test_tasks: int = 24,
                          instances_per_task: int = 32) -> Path:
    """Like :func:`write_embedded_tasks`, but reuse ``out_dir`` when its manifest says it holds these tasks."""
    out_dir = Path(out_dir)
    wanted = _params(seed, num_train_tasks, num_test_tasks, instances_per_task)
    try:
        current = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    splits_ok = all((out_dir / "splits" / "default" / f"{s}_tasks.txt").is_file() for s in ("train", "test"))
    if current == wanted and splits_ok:
        return out_dir
    return write_embedded_tasks(out_dir, seed, num_train_tasks, num_test_tasks, instances_per_task)
