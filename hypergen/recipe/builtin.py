"""The recipes that ship inside the package (``hypergen/recipes/*.json``; the repository's ``recipes/`` is a link to
that folder): find one by name, describe them for ``hypergen recipes list``, copy one for ``hypergen recipes copy``.

A recipe argument (``hypergen train ARG``) is a path when such a file exists, else the name of a built-in recipe
(``tiny_hart`` or ``tiny_hart.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import HypergenError
from ..io import atomic_write_bytes

CONSISTENCY = "local_consistency"


def recipes_folder() -> Path:
    """The folder of the built-in recipes, inside the installed package."""
    return Path(str(resources.files("hypergen") / "recipes"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in recipes_folder().glob("*.json"))


def builtin_recipe(name: str) -> Path | None:
    """The file of the built-in recipe ``name`` (with or without ``.json``), or None."""
    stem = name[:-5] if name.endswith(".json") else name
    if "/" in stem or "\\" in stem:
        return None
    path = recipes_folder() / f"{stem}.json"
    return path if path.is_file() else None


def resolve_recipe(argument: str) -> str:
    """A recipe argument as a file path: the file itself when it exists, else the built-in recipe of that name."""
    if Path(argument).expanduser().is_file():
        return argument
    found = builtin_recipe(argument)
    if found is not None:
        return str(found)
    raise HypergenError(f"{argument}: recipe file not found, and not the name of a built-in recipe "
                        f"(known: {', '.join(builtin_names())}; see `hypergen recipes list`)")


@dataclass
class RecipeSummary:
    name: str
    method: str
    main_model: str
    description: str


def method_label(data: dict[str, Any]) -> str:
    """HART, HyperTuning, a hybrid (its generator and regularizers), or a finetune baseline; plus the PEFT target
    (and, for a pretrain recipe, that it pre-trains)."""
    if data.get("kind") == "finetune":
        return "FT-Few-Shot" if data.get("few_shot") else "FT-Zero-Shot"
    hyper = data.get("hypernetwork", {})
    generator = hyper.get("generator", {}).get("name", "autoregressive").split(".v")[0]
    peft = data.get("peft", {}).get("name", "prefix")
    if generator == "learned_states":  # no conditioning: one PEFT module trained over all training tasks
        name = {"prefix": "Prefix-Tuning", "lora": "LoRA"}.get(peft, peft)
        return f"{name} on FT-Few-Shot" if data.get("data", {}).get("demos_in_input") else f"multi-task {name}"
    regularizers = [r.get("name", "?").split(".v")[0] for r in hyper.get("regularizers", [])]
    consistency = CONSISTENCY in regularizers
    if generator == "autoregressive" and regularizers == [CONSISTENCY]:
        label = "HART"
    elif generator == "non_autoregressive" and not regularizers:
        label = "HyperTuning"
    else:
        label = f"hybrid ({generator}, {'with' if consistency else 'no'} consistency)"
    stage = "pre-training (HyperTuning-PT), " if data.get("kind") == "pretrain" else ""
    return f"{stage}{label} + {peft}"


def main_model_label(data: dict[str, Any]) -> str:
    spec = data.get("main_model", {})
    if "tiny" in spec:
        tiny = spec["tiny"] or {}
        return (f"tiny T5 (d_model {tiny.get('d_model', 128)}, {tiny.get('num_layers', 3)}+"
                f"{tiny.get('num_decoder_layers', 2)} layers)")
    return str(spec.get("name_or_path"))


def one_line(description: str, width: int = 80) -> str:
    sentence = description.split(". ")[0].strip().rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip() + "..."


def summaries() -> list[RecipeSummary]:
    out = []
    for name in builtin_names():
        data = json.loads((recipes_folder() / f"{name}.json").read_text())
        out.append(RecipeSummary(name, method_label(data), main_model_label(data),
                                 one_line(data.get("description", ""))))
    return out


def relative_paths(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, value)`` of the recipe's local paths that are relative (resolved against the working folder).

    A ``main_model.name_or_path`` is taken for a path, not a hub id (``owner/name``), when it starts with "." or
    "~" or has more than one "/"."""
    found = []
    name = data.get("main_model", {}).get("name_or_path")
    if isinstance(name, str) and not Path(name).is_absolute() and (name.startswith(".") or name.count("/") > 1):
        found.append(("main_model.name_or_path", name))
    path = data.get("data", {}).get("path")
    if isinstance(path, str) and not Path(path).expanduser().is_absolute():
        found.append(("data.path", path))
    return found


def copy_recipe(name: str, dest: str | Path, overwrite: bool = False) -> tuple[Path, list[tuple[str, str]]]:
    """Copy the built-in recipe ``name`` to ``dest`` (a file, or an existing folder: ``dest/NAME.json``), byte for
    byte (atomically). Returns the written file and the recipe's relative paths, which keep meaning "relative to the folder
    `hypergen train` runs in", as for every recipe."""
    source = builtin_recipe(name)
    if source is None:
        raise HypergenError(f"{name}: not a built-in recipe (known: {', '.join(builtin_names())})")
    dest = Path(dest)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists() and not overwrite:
        raise HypergenError(f"{target}: already exists; pass --overwrite or choose another destination")
    if not target.parent.is_dir():
        raise HypergenError(f"{target.parent}: folder does not exist")
    atomic_write_bytes(target, source.read_bytes())
    return target, relative_paths(json.loads(source.read_text()))
