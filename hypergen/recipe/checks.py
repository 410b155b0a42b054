"""Checks on recipe data before and after pydantic: one-line validation errors naming each field's path, and
plain-JSON rules (finite numbers, bounded nesting) that pydantic does not make; ``Strict``, every section's base."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import RecipeError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def format_validation_error(exc: ValidationError, where: str, prefix: str = "") -> str:
    """One line: ``where: prefix.path: message (got value); ...`` for each error pydantic found."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"])) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            message += f" (got {_short(err['input'])})"
        parts.append(f"{path}: {message}")
    return f"{where}: " + "; ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_DEPTH = 32  # a recipe is a few levels deep; far deeper is a mistake (and would exhaust Python's stack)


def check_plain_json(data: Any, where: str) -> None:
    """Refuse NaN and infinite numbers anywhere (``1e999`` parses as infinity) and nesting deeper than
    :data:`MAX_DEPTH`, naming the field's path. Iterative, so any depth is refused cleanly."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        name = ".".join(path) or "(top level)"
        if len(path) > MAX_DEPTH:
            raise RecipeError(f"{where}: {'.'.join(path[:4])}...: nested more than {MAX_DEPTH} levels deep; a recipe "
                              "is a few levels deep")
        if isinstance(node, float) and not math.isfinite(node):
            raise RecipeError(f"{where}: {name}: {node} is not a finite number; NaN and infinity are not allowed "
                              "in a recipe")
        if isinstance(node, dict):
            stack.extend((value, (*path, str(key))) for key, value in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((value, (*path, str(i))) for i, value in enumerate(node))


def tiny_architecture(value: str) -> str:
    """``main_model.tiny.architecture``: the name of a registered family's tiny builder (t5, llama, qwen2, mistral,
    gemma3, gpt2, or a plugin's)."""
    from ..models.families import tiny_names

    if value not in tiny_names():
        raise ValueError(f"unknown architecture {value!r}; known: {', '.join(tiny_names())}")
    return value
