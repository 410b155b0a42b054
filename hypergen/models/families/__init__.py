"""Model families: what hypergen knows of each kind of main model, one small file per family.

Layout::

    base.py     the Family interface (backbone, shape and shape fields, linear sites by role, the prefix
                attention, peft's task type and default LoRA targets, a tiny builder) and its generic parts
    t5.py       T5, mT5                            encoder-decoder; fusion-in-decoder
    llama.py    Llama, Qwen2, Mistral              model.layers; q/k/v/o_proj, gate/up/down_proj
    gemma3.py   Gemma 3 (gemma3_text)              Llama's layout; Gemma's scaled, soft-capped, sliding attention
    gpt2.py     GPT-2                              transformer.h; Conv1D projections, fused c_attn; learned positions

A family is registered in ``registry.families`` (entry-point group ``hypergen_families`` for a plugin: its value
is a :class:`.base.Family` subclass or instance) and chosen by the main model's ``config.model_type``
(:func:`family_of`); a recipe's tiny main model names a family's ``tiny_names`` (:func:`tiny_family`). The
backbones the families build live in hypergen/models/backbones/; the PEFT targets ask a family for sites and
attention modules, never which family it is. A new family: one file here (imported below, or a plugin's entry
point) and one row in tests/models/test_families.py.
"""

from __future__ import annotations

from typing import Any

from ...errors import HypergenError
from ...registry import registry
from . import gemma3, gpt2, llama, t5  # noqa: F401 - the built-ins register themselves
from .base import Family

_instances: dict[Any, Family] = {}


def families() -> dict[str, Family]:
    """Every registered family (built-in and from plugins), by name."""
    found = {}
    for name, entry in registry.entries("families").items():
        if entry not in _instances:
            _instances[entry] = entry() if isinstance(entry, type) else entry
        found[name] = _instances[entry]
    return found


def family_of(model_or_config) -> Family:
    """The family serving a main model (or its config), by ``config.model_type``; one line listing the known
    families otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    known = families()
    for family in known.values():
        if model_type in family.model_types:
            return family
    what = type(model_or_config).__name__
    raise HypergenError(f"main_model: {what} (model type {model_type!r}) belongs to no hypergen family; known: "
                        + "; ".join(f"{n} ({', '.join(f.model_types)})" for n, f in sorted(known.items())))


def lora_target_names() -> list[str]:
    """What a LoRA's ``targets`` may name on some family (each family checks its own when given a model)."""
    return list(dict.fromkeys(name for family in families().values() for name in family.target_vocabulary))


def tiny_names() -> list[str]:
    """What ``main_model.tiny.architecture`` may name: every family's tiny builders."""
    return sorted(name for family in families().values() for name in family.tiny_names)


def tiny_family(architecture: str) -> Family:
    """The family whose tiny builder is named ``architecture``."""
    for family in families().values():
        if architecture in family.tiny_names:
            return family
    raise HypergenError(f"main_model.tiny.architecture: unknown {architecture!r}; known: {', '.join(tiny_names())}")
