"""The :class:`Family` interface: everything hypergen knows of one kind of main model, declared in one place.

A family answers, for a main model of one of its ``model_types`` (``config.model_type``):

    backbone(main_model, k, init_from_main)   the hypernetwork built from it (:class:`..backbones.base.Backbone`)
    shape(main_model) / config_shape(config)  its groups of layers; the config fields a saved hypernetwork checks
    all_sites(main_model)                     every linear site a LoRA can adapt (:class:`LinearSite`: peft's
                                              module name, roles attn.q/k/v/o, mlp.in/out, Conv1D and fused flags)
    sites(main_model, targets, ...)           the sites ``targets`` (module names or roles) ask for, in slot order
    attention, attention_modules, prefix_sites    the attention function prefixes go through, and where
    fusion_keys_values(main_model, states)    a causal LM's fusion analogue: the encoded demos as every layer's
                                              keys/values (:meth:`Family.fused` puts them before each query)
    forward(...), generate(...)               the frozen main model teacher-forced and generating
    peft_task_type, default_lora_targets      peft's task type and its default LoRA target modules
    tiny(spec, vocab_size)                    a tiny random model of ``tiny_names`` for CPU tests
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..backbones.base import Backbone, Context, LinearSite, MainModelShape
from ..prefix_attention import _FUSION, use_prefix_attention

Site = LinearSite


class Family:
    """One family of main models (see the module docstring). Subclasses set the class attributes and implement
    the structural methods; :meth:`sites` and :meth:`config_shape` are generic."""

    name: str = ""
    model_types: tuple[str, ...] = ()  # the config.model_type values this family serves
    tiny_names: tuple[str, ...] = ()  # what recipe's main_model.tiny.architecture may name to build one
    encoder_decoder: bool = False
    attention_kinds: tuple[str, ...] = ("self",)  # what a LoRA target's ``attention`` may hold
    peft_task_type: str = "CAUSAL_LM"
    default_lora_targets: tuple[str, ...] = ()  # peft's defaults (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    target_vocabulary: tuple[str, ...] = ()  # every module name and role its sites may have (checked before a model)
    prefix_fields: tuple[str, ...] = ()  # config fields a prefix adapter must match
    attention: Callable[..., Any] | None = None  # the family's eager attention, which prefixes are prepended in

    def __repr__(self) -> str:
        return f"<family {self.name}: {', '.join(self.model_types)}>"

    # -------------------------------------------------------------------------------------------------- shape
    @property
    def shape_fields(self) -> tuple[str, ...]:
        """The config fields a saved hypernetwork checks its main model by (those of a prefix, and the vocabulary)."""
        return (*self.prefix_fields, "vocab_size")

    def config_shape(self, config) -> dict[str, Any]:
        return {key: getattr(config, key, None) for key in self.shape_fields}

    def check(self, main_model: nn.Module) -> None:
        """Raise ValueError (one line) when ``main_model`` lacks the modules this family reads."""

    def shape(self, main_model: nn.Module) -> MainModelShape:
        raise NotImplementedError

    def layers(self, main_model: nn.Module) -> list[nn.Module]:
        """The main model's blocks (what activation recompute wraps)."""
        raise NotImplementedError

    def describe(self, config) -> dict[str, Any]:
        """The main model's shape as ``hypergen bench`` reports it."""
        return {"architecture": config.model_type, **self.config_shape(config)}

    # -------------------------------------------------------------------------------------------------- sites
    def all_sites(self, main_model: nn.Module) -> list[tuple[LinearSite, nn.Module]]:
        """Every adaptable projection, listed per projection kind, then layer."""
        raise NotImplementedError

    def target_names(self, main_model: nn.Module) -> list[str]:
        """What a LoRA's ``targets`` may name on this model: peft's module names, then roles."""
        everything = [site for site, _ in self.all_sites(main_model)]
        return list(dict.fromkeys([s.module for s in everything] + [r for s in everything for r in s.roles]))

    def sites(self, main_model: nn.Module, targets: Sequence[str] | None = None, attention: Sequence[str] = ("self",),
              sides: Sequence[str] | None = None) -> list[tuple[LinearSite, nn.Module]]:
        """The sites ``targets`` ask for (peft module names such as "q_proj", or roles such as "attn.q"; default
        :attr:`default_lora_targets`) in the ``attention`` kinds and (encoder-decoder only) the ``sides``, each
        once, ordered by side, attention, target, then definition and layer. ValueError names what is unknown."""
        targets = tuple(targets or self.default_lora_targets)
        bad = [att for att in attention if att not in self.attention_kinds]
        if bad:
            raise ValueError(f"attention: {list(attention)}: {type(main_model).__name__} has only "
                             f"{' and '.join(self.attention_kinds)}-attention; use {list(self.attention_kinds)}")
        allowed = self.target_names(main_model)
        unknown = [t for t in targets if t not in allowed]
        if unknown:
            raise ValueError(f"targets: {unknown} are not projections of {type(main_model).__name__}; allowed: "
                             f"{', '.join(allowed)}")
        side_order = list(sides) if (self.encoder_decoder and sides is not None) else None
        chosen = []
        for index, (site, module) in enumerate(self.all_sites(main_model)):
            asked = [i for i, t in enumerate(targets) if t == site.module or t in site.roles]
            if not asked or (site.attention is not None and site.attention not in attention):
                continue
            if side_order is not None and site.source not in side_order:
                continue
            key = (side_order.index(site.source) if side_order else 0,
                   list(attention).index(site.attention) if site.attention in attention else 0, min(asked), index)
            chosen.append((key, site, module))
        return [(site, module) for _, site, module in sorted(chosen, key=lambda item: item[0])]

    # ------------------------------------------------------------------------------------------------ prefixes
    def attention_modules(self, main_model: nn.Module) -> list[nn.Module]:
        """Every attention module of the main model: what the prefix attention function runs in."""
        raise NotImplementedError

    def prefix_sites(self, main_model: nn.Module, encoder: bool, decoder: bool
                     ) -> list[tuple[str, int, nn.Module, int, int]]:
        """(group, layer, self-attention module, key/value heads, head width) of every prefixed layer."""
        raise NotImplementedError

    # ------------------------------------------------ fusion: a causal LM's analogue of fusion-in-decoder
    def fusion_keys_values(self, main_model: nn.Module, states: torch.Tensor
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per prefix site (layer), the encoded demos ``states`` (B x n_d x d_model) read by that layer's own input
        norm and key/value projections: (keys, values), each B x kv_heads x n_d x head width, unrotated."""
        raise ValueError(f"hypernetwork.fusion_in_decoder: the {self.name} family has no analogue of fusion-in-"
                         "decoder; set it to false")

    @contextmanager
    def fused(self, main_model: nn.Module, context: Context | None) -> Iterator[None]:
        """Inside the block, every layer of a causal LM attends to the hypernetwork's encoding of each example's
        demos before its own keys (``context``: T task rows and B example ``rows``, or None: nothing changes).

        The analogue of fusion-in-decoder (appendix 6.1.3, where T5's decoder cross-attends to [e ; Enc_main(x)]):
        layer l's extra keys and values are K_l = W_k^l norm_l(e), V_l = W_v^l norm_l(e), e the hypernetwork's
        final states of the demos (n_d of them, padding masked), at no position (like a prefix). Per query it
        costs attention over n_d more keys in every layer, as in-context demos do, but no pass of the demos through
        the main model. With ``context.gate`` (the hypernetwork's, L values, zero at first) layer l adds
        tanh(g_l) times its attention over the demos alone to its own attention output (Flamingo's gated
        cross-attention: the frozen model exactly, until training opens the gate); without, the demos' keys join
        the layer's own softmax."""
        if context is None:
            yield
            return
        context = context.per_example()
        use_prefix_attention(main_model, self.attention_modules(main_model), self.attention)
        sites = self.prefix_sites(main_model, False, True)
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for (_, _, attention, _, _), (keys, values) in zip(sites, self.fusion_keys_values(main_model,
                                                                                              context.states)):
                saved.append((attention, getattr(attention, _FUSION, None)))
                gate = None if context.gate is None else context.gate[len(saved) - 1]
                setattr(attention, _FUSION, (keys, values, context.mask, gate))
            yield
        finally:
            for attention, previous in reversed(saved):
                setattr(attention, _FUSION, previous)

    # ------------------------------------------------------------------------------------- backbone, main model
    def backbone(self, main_model: nn.Module, decoder_layers: int, init_from_main: bool = True) -> Backbone:
        raise NotImplementedError

    def forward(self, main_model, fusion_states, input_ids, attention_mask, labels):
        """Teacher-forced on ``labels``: ``.loss`` and ``.logits`` B x n_y x V (row t predicts answer token t)."""
        raise NotImplementedError

    def generate(self, main_model, fusion_states, input_ids, attention_mask, max_new_tokens: int,
                 num_beams: int) -> torch.Tensor:
        raise NotImplementedError

    def tiny(self, spec, vocab_size: int) -> nn.Module:
        """A model of ``spec.architecture`` (one of :attr:`tiny_names`) and ``spec``'s widths, random weights
        seeded by ``spec.seed``."""
        raise NotImplementedError


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, the global generator left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def site_widths(site: LinearSite, module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a site's projection: an nn.Linear's, or a Conv1D's (weight d_in x d_out)."""
    if site.fan_in_fan_out:
        return tuple(module.weight.shape)
    return module.in_features, module.out_features
