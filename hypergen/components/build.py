"""Build components from recipe specs, with errors that name the recipe field.

A component's parameters are checked against its factory's signature before it is called: an unknown name is
refused with the accepted ones, and each value is validated (pydantic, lax mode: ``5`` is a fine float, ``"fast"``
is not) against the parameter's type hint, so a wrong type names the field and the expected type, e.g.
``hypernetwork.regularizers.0.alpha: Input should be a valid number ... (got 'fast')``. Parameters without a type
hint, or factories whose hints cannot be resolved, are passed as given.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

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
    params = validate_params(factory, params, where)
    try:
        return factory(**params)
    except HypergenError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecipeError(f"{where}: cannot build {spec.name!r} with {params}: {exc}") from None


def validate_params(factory: Any, params: dict[str, Any], where: str) -> dict[str, Any]:
    """``params`` validated against ``factory``'s type hints (the values as pydantic converted them)."""
    model = _params_model(factory)
    if model is None or not params:
        return params
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        raise RecipeError(f"{where}.{_describe(exc, model, params)}") from None
    return {name: getattr(validated, name) for name in params if name in model.model_fields} | {
        name: value for name, value in params.items() if name not in model.model_fields}


@functools.lru_cache(maxsize=None)
def _params_model(factory: Any) -> type[BaseModel] | None:
    """A pydantic model of the factory's hinted keyword parameters; None when there is nothing to check."""
    try:
        signature = inspect.signature(factory)
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # noqa: BLE001 - unresolvable hints (a plugin's forward references): no type check
        return None
    fields = {name: (hints[name], None if p.default is p.empty else p.default)
              for name, p in signature.parameters.items()
              if name in hints and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not fields:
        return None
    try:
        return create_model(f"{getattr(factory, '__name__', 'component')}Params",
                            __config__=ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False, extra="allow"),
                            **fields)
    except Exception:  # noqa: BLE001 - a hint pydantic cannot use, or a name it reserves: no type check
        return None


def _describe(exc: ValidationError, model: type[BaseModel], params: dict[str, Any]) -> str:
    """``name: what was expected (got value)`` per bad parameter, ``; ``-joined (one line)."""
    by_param: dict[str, list[dict]] = {}
    for err in exc.errors():
        by_param.setdefault(str(err["loc"][0]), []).append(err)
    parts = []
    for name, errors in by_param.items():
        value = params.get(name)
        if len(errors) == 1 and len(errors[0]["loc"]) == 1:
            message = errors[0]["msg"]
        else:  # a union, or an element of a list: say the whole expected type
            message = f"expected {_type_name(model.model_fields[name].annotation)}"
        parts.append(f"{name}: {message} (got {value!r})")
    return "; ".join(parts)


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
