"""Reading a recipe: a file (UTF-8, or UTF-16/32 with a byte-order mark) or a dict, ``--set`` overrides applied,
validated by the recipe's kind; every problem one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import HypergenError, RecipeError
from ..io import read_json
from .checks import check_plain_json, format_validation_error
from .models import RECIPE_KINDS, HypernetRecipe, PretrainRecipe, Recipe


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict; raise RecipeError naming each bad field's path."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a JSON object at the top level, got {type(data).__name__}")
    check_plain_json(data, where)
    model = RECIPE_KINDS.get(data.get("kind"), HypernetRecipe)
    try:
        recipe = model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, where)) from None
    if recipe.training.eval_every and isinstance(recipe, PretrainRecipe):
        raise RecipeError(f"{where}: training.eval_every: a pretrain run has no periodic evaluation (it trains on "
                          "text, not tasks); remove eval_every")
    if recipe.training.eval_every and recipe.data.validation_tasks is None:
        raise RecipeError(f"{where}: training.eval_every: periodic evaluation scores the validation split, never the "
                          "test tasks; set data.validation_tasks (a fraction of the training tasks or their names) "
                          "or remove eval_every")
    return recipe


def read_recipe_dict(path: str | Path) -> dict[str, Any]:
    """The JSON object of a recipe file (UTF-8, or UTF-16/32 with a byte-order mark), checked for NaN, infinity
    and depth; every problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = read_json(path, "recipe")
    except HypergenError as exc:
        raise RecipeError(str(exc)) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    check_plain_json(data, str(path))
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "--set") -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; the value is parsed as JSON when it parses, else kept as a string."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{where} {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (or absurdly nested): the text itself
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise RecipeError(f"{where} {key}: {part!r} is not inside an object")
            node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"{where} {key}: cannot set {last!r} there")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(read_recipe_dict(path), overrides or [])
    return parse_recipe(data, str(path))


def recipe_schema() -> dict[str, Any]:
    """The JSON schema of every recipe kind."""
    return {"hypernetwork": HypernetRecipe.model_json_schema(),
            **{kind: model.model_json_schema() for kind, model in RECIPE_KINDS.items()}}
