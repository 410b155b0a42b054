"""Backbones: one module per main-model family (``t5``, ``causal``), chosen from the main model's config.

Each family module offers the hypernetwork's backbone class, the main model's shape and the frozen main model's
teacher-forced forward and generation (``main_forward``, ``main_generate``)."""

from __future__ import annotations

from types import ModuleType

from torch import nn

from . import causal, t5
from .demo_free import DemoFreeBackbone


def family(main_model: nn.Module) -> ModuleType:
    """The family module of ``main_model``: :mod:`.t5` for an encoder-decoder, :mod:`.causal` otherwise."""
    return t5 if getattr(main_model.config, "is_encoder_decoder", False) else causal


def is_causal(main_model: nn.Module) -> bool:
    """Whether ``main_model`` is a decoder-only LM (it reads ``[query ; answer]``, see :mod:`.causal`)."""
    return family(main_model) is causal


def make_backbone(main_model: nn.Module, decoder_layers: int, init_from_main: bool = True, reads_demos: bool = True):
    """The hypernetwork's backbone for ``main_model``: its first ``decoder_layers`` layers (and, for T5, its
    encoder), a copy of the main model's weights unless ``init_from_main`` is false; for a generator that does not
    read the demos (``reads_demos`` false), a :class:`.demo_free.DemoFreeBackbone` with no layers at all."""
    if not reads_demos:
        return DemoFreeBackbone(main_model, main_model_shape(main_model))
    return family(main_model).BACKBONE(main_model, decoder_layers, init_from_main)


def main_model_shape(main_model: nn.Module):
    """The main model's groups of layers (:class:`.base.MainModelShape`)."""
    return family(main_model).main_shape(main_model)
