"""Components: generators, projectors, regularizers and PEFT targets, each behind an abstract interface.

Importing this package registers the built-in components (their modules' registry decorators run here).
"""

from . import generators, projectors, regularizers, targets  # noqa: F401
