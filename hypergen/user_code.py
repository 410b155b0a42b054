"""``--code FILE.py`` (as in spaCy): import a Python file that registers components before a recipe is read.

The file registers with hypergen's registry decorators, e.g.::

    from hypergen.components.base import Generator
    from hypergen.registry import registry

    @registry.generators.register("my_generator.v1")
    class MyGenerator(Generator): ...

so that a recipe can name ``my_generator`` without packaging it as a plugin.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .errors import HypergenError


def import_code_file(path: str | Path, where: str = "--code") -> ModuleType:
    """Import ``path`` as the module ``hypergen_code_<stem>`` (its decorators register its components).

    A missing file, one that is not ``.py``, or one whose import raises gives a one-line HypergenError naming
    ``where``, the file and the error.
    """
    file = Path(path)
    if not file.is_file():
        raise HypergenError(f"{where}: {file} does not exist or is not a file")
    if file.suffix != ".py":
        raise HypergenError(f"{where}: {file} is not a Python file (.py)")
    name = f"hypergen_code_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined there must be importable by their module name (deepcopy, pickle)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's file is reported as one line
        del sys.modules[name]
        message = " ".join(str(exc).split())
        raise HypergenError(f"{where}: importing {file} failed: {type(exc).__name__}: {message}") from None
    return module
