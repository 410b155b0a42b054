"""Build components from recipe specs, with errors that name the recipe field."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import HypergenError, RecipeError, UnknownComponentError
from ..recipe import ComponentSpec
from ..registry import registry


def make_component(kind: str, spec: ComponentSpec, where: str) -> Any:
    """Instantiate ``spec`` from registry ``kind``; ``where`` is the recipe path, e.g. ``hypernetwork.generator``."""
    try:
        factory = registry.resolve(kind, spec.name)
    except UnknownComponentError as exc:
        raise RecipeError(f"{where}.name: {exc}") from None
    params = spec.params
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        accepted = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise RecipeError(f"{where}: unknown parameter(s) {', '.join(unknown)} for {spec.name!r}; "
                              f"accepted: {', '.join(accepted) or '(none)'}")
    try:
        return factory(**params)
    except HypergenError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: cannot build {spec.name!r} with {params}: {exc}") from None
