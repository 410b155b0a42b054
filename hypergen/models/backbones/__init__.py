"""Backbones: the hypernetwork's copy of (part of) the main model, one class per kind of model (:mod:`.t5`,
:mod:`.causal`), built by the main model's family (:mod:`hypergen.models.families`), which also runs the frozen
main model (``forward``, ``generate``). The functions here ask the family; the families import these modules, so
they import the families package only when called."""

from __future__ import annotations

from torch import nn

from .demo_free import DemoFreeBackbone


def family(main_model: nn.Module):
    """The :class:`hypergen.models.families.base.Family` of ``main_model`` (by ``config.model_type``)."""
    from ..families import family_of

    return family_of(main_model)


def is_causal(main_model: nn.Module) -> bool:
    """Whether ``main_model`` is a decoder-only LM (it reads ``[query ; answer]``, see :mod:`.causal`)."""
    return not family(main_model).encoder_decoder


def make_backbone(main_model: nn.Module, decoder_layers: int, init_from_main: bool = True, reads_demos: bool = True):
    """The hypernetwork's backbone for ``main_model``: its first ``decoder_layers`` layers (and, for T5, its
    encoder), a copy of the main model's weights unless ``init_from_main`` is false; for a generator that does not
    read the demos (``reads_demos`` false), a :class:`.demo_free.DemoFreeBackbone` with no layers at all."""
    if not reads_demos:
        return DemoFreeBackbone(main_model, main_model_shape(main_model))
    return family(main_model).backbone(main_model, decoder_layers, init_from_main)


def main_model_shape(main_model: nn.Module):
    """The main model's groups of layers (:class:`.base.MainModelShape`)."""
    return family(main_model).shape(main_model)
