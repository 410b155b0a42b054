"""The component registries, in one place.

Each registry is a ``catalogue`` registry with entry points on: a third-party package registers a component by
declaring an entry point in one of the groups ``hypergen_generators``, ``hypergen_projectors``,
``hypergen_regularizers``, ``hypergen_peft_targets`` or ``hypergen_loggers`` (metric loggers) whose value is the component's factory (usually its class).
The group ``hypergen_packaged_models`` names main models that a Python package ships as a GGUF file: its value is
a function returning a ``hypergen.models.packaged.PackagedModel`` (built-ins register when that module is imported).
The group ``hypergen_families`` adds a main-model family: a ``hypergen.models.families.base.Family`` subclass (or
instance), chosen by ``config.model_type`` (built-ins register when ``hypergen.models.families`` is imported).
Built-in component names are versioned (``autoregressive.v1``; a packaged model is named as its model); the bare name (``autoregressive``) resolves to the newest
version. A plugin whose entry point fails to import is reported with a warning naming it; every other component
still works.

This module imports no component: the built-ins register themselves when ``hypergen.components`` is imported
(its ``__init__`` imports every built-in module), so whoever lists or resolves names imports that package first.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import catalogue

from .errors import UnknownComponentError

KINDS = ("generators", "projectors", "regularizers", "peft_targets", "loggers", "packaged_models", "families")
_VERSIONED = re.compile(r"(.+)\.v(\d+)")


class Registries:
    """``registry.generators``, ``registry.projectors``, ... : catalogue registries, plus name resolution."""

    def __init__(self) -> None:
        self.generators = catalogue.create("hypergen", "generators", entry_points=True)
        self.projectors = catalogue.create("hypergen", "projectors", entry_points=True)
        self.regularizers = catalogue.create("hypergen", "regularizers", entry_points=True)
        self.peft_targets = catalogue.create("hypergen", "peft_targets", entry_points=True)
        self.loggers = catalogue.create("hypergen", "loggers", entry_points=True)
        self.packaged_models = catalogue.create("hypergen", "packaged_models", entry_points=True)
        self.families = catalogue.create("hypergen", "families", entry_points=True)
        self._plugins_loaded: set[str] = set()

    def get_registry(self, kind: str) -> catalogue.Registry:
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown registry {kind!r}; known registries: {', '.join(KINDS)}")
        return getattr(self, kind)

    def _load_plugins(self, kind: str) -> None:
        """Load each entry point of ``kind``'s group on its own, so one broken plugin spoils nothing else."""
        if kind in self._plugins_loaded:
            return
        self._plugins_loaded.add(kind)
        reg = self.get_registry(kind)
        for entry_point in reg._get_entry_points():
            try:
                factory = entry_point.load()
            except Exception as exc:  # noqa: BLE001 - any import failure of third-party code
                package = getattr(getattr(entry_point, "dist", None), "name", None) or entry_point.value
                warnings.warn(
                    f"hypergen plugin {package!r} failed to load its {kind[:-1]} {entry_point.name!r} "
                    f"({entry_point.value}): {type(exc).__name__}: {exc}",
                    stacklevel=2,
                )
                continue
            reg.register(entry_point.name, func=factory)

    def entries(self, kind: str) -> dict[str, Any]:
        """Every component registered in ``kind`` (built-in and from installed plugins), by name."""
        self._load_plugins(kind)
        namespace = self.get_registry(kind).namespace
        return {
            keys[-1]: value
            for keys, value in catalogue.REGISTRY.items()
            if keys[: len(namespace)] == namespace and len(keys) == len(namespace) + 1
        }

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries(kind))

    def resolve(self, kind: str, name: str) -> Callable[..., Any]:
        """The factory registered as ``name`` in ``kind``; an unknown name lists the known ones."""
        entries = self.entries(kind)
        if name in entries:
            return entries[name]
        versions = [(int(m.group(2)), n) for n in entries if (m := _VERSIONED.fullmatch(n)) and m.group(1) == name]
        if versions:
            return entries[max(versions)[1]]
        raise UnknownComponentError(
            f"unknown {kind[:-1].replace('_', ' ')} {name!r}; known: {', '.join(sorted(entries)) or '(none)'}"
            " (if it comes from a plugin, is that package installed?)"
        )


registry = Registries()
