"""PEFT targets: where generated parameters go in the frozen main model."""

from . import prefix  # noqa: F401
