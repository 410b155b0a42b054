"""PEFT targets: where generated parameters go in the frozen main model."""

from . import lora, prefix  # noqa: F401
