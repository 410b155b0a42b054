"""Prefix tuning: generated per-example key/value prefixes for every self-attention layer of a T5 or causal LM.

Convention: the ``p`` prefix keys are prepended to each self-attention layer's keys (and the prefix values to its
values). Prefix keys get ZERO relative-position bias (T5) or no rotary embedding (a causal LM: they are generated
in the rotated key space, at no position) and are visible to every query (encoder and decoder alike); real tokens
keep their T5 bias or rotary positions, their padding mask and, in a decoder, their causal mask. Cross-attention
(``EncDecAttention``) never gets a prefix. Which modules exist, and the attention the prefix is prepended in, are
the main model's family's (``prefix_sites``, ``attention`` in hypergen/models/families/: Gemma 3's scaled,
soft-capped attention over its sliding-window masks; GPT-2's after its fused ``c_attn``).

Mechanism: :meth:`PrefixTarget.prepare` registers the attention function :func:`prefix_attention_forward` under
the name ``"hypergen_prefix"`` (with T5's eager float mask) and switches the model to it; without a prefix (none
applied, or length 0) it is exactly T5's eager attention. With a prefix, the scores are computed by ``torch.nn.functional.scaled_dot_product_attention`` with one additive
float mask (T5 bias + padding/causal mask, zeros on the prefix columns) when the target's ``attention`` is
``"sdpa"`` (the default: faster on this project's CPU at every measured width, benchmarks/results/throughput_sdpa.md),
or by T5's eager matmul-softmax-matmul with ``"eager"``; eager is also used whenever attention weights are asked
for (``output_attentions``), since SDPA does not return them. Both agree to 1e-5 in fp32. :meth:`PrefixTarget.applied` puts each layer's prefix on its ``SelfAttention``
module for the duration of a ``with`` block. Prefixes are never written to the KV cache, so ``generate()`` with
a cache and beam search work (a prefix batch of B is ``repeat_interleave``-d to match a key batch of B * beams).

Adapter folder (``adapter_format = "prefix"``, hypergen's own)::

    FOLDER/adapter_config.json        {"hypergen_adapter": "prefix", "length", "encoder", "decoder", the main
                                      model's shape (T5: "num_layers", "num_decoder_layers", "num_heads", "d_kv",
                                      "d_model"; a causal LM: "num_hidden_layers", "num_key_value_heads",
                                      "head_dim", "hidden_size"), "base_model_name_or_path", "fusion_in_decoder"}
    FOLDER/prefix.safetensors         "encoder.key", "encoder.value", "decoder.key", "decoder.value" (the sides it
                                      prefixes; a causal LM: "layers.key", "layers.value"):
                                      num_layers x length x (heads * head width)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import HypergenError
from ...io import atomic_save_tensors, read_safetensors
from ...models.families import family_of
from ...models.prefix_attention import (  # noqa: F401 - the attention itself lives beside the models it runs in
    _KERNEL, _PREFIX, ATTENTION_KERNELS, ATTN_IMPLEMENTATION, prefix_attention_forward, use_prefix_attention)
from ...registry import registry
from ..base import ADAPTER_CONFIG, TEMPORARY_ATTRIBUTE_PREFIX, PEFTTarget, SlotGroup

_SITE = f"{TEMPORARY_ATTRIBUTE_PREFIX}prefix_site"  # on a tagged SelfAttention module: (side, layer index)
PREFIX_WEIGHTS = "prefix.safetensors"


@registry.peft_targets.register("prefix.v1")
class PrefixTarget(PEFTTarget):
    """Per-example key/value prefixes of ``length`` rows for the encoder and/or decoder self-attention layers.

    Slot groups ``"{side}.key"`` / ``"{side}.value"``: num_layers x length x (num_heads * d_kv) per example (a
    causal LM: ``"layers.key"``/``"layers.value"``, switched by ``decoder``, width key/value heads x head width).
    """

    adapter_format = "prefix"

    def __init__(self, length: int = 32, encoder: bool = True, decoder: bool = True,
                 attention: str = "sdpa") -> None:
        if length < 0:
            raise ValueError(f"prefix length must be >= 0, got {length}")
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"prefix attention must be one of {', '.join(ATTENTION_KERNELS)}, got {attention!r}")
        self.length = length
        self.encoder = encoder
        self.decoder = decoder
        self.attention = attention

    def sites(self, main_model: nn.Module) -> list[tuple[str, int, nn.Module, int, int]]:
        """(group, layer, attention module, heads, head width) of every prefixed layer (the family's answer)."""
        return family_of(main_model).prefix_sites(main_model, self.encoder, self.decoder)

    def slot_groups(self, main_model: nn.Module) -> list[SlotGroup]:
        layers: dict[str, int] = {}
        widths: dict[str, int] = {}
        for group, _, _, heads, head_dim in self.sites(main_model):
            layers[group] = layers.get(group, 0) + 1
            widths[group] = heads * head_dim
        # values generated as zero at first: a fresh prefix then only rescales each attention output by
        # Z / (Z + Z_prefix) (Z: the real keys' softmax mass), measured small on SmolLM2 (real_model.md)
        return [SlotGroup(f"{group}.{kind}", group, count, self.length, widths[group], zero_at_init=kind == "value")
                for group, count in layers.items() for kind in ("key", "value")]

    def prepare(self, main_model: nn.Module) -> None:
        """Switch every (sub)config of ``main_model`` to ``"hypergen_prefix"`` and tag the self-attention modules."""
        models_family = family_of(main_model)
        use_prefix_attention(main_model, models_family.attention_modules(main_model), models_family.attention)
        for group, i, attention, _, _ in self.sites(main_model):
            if attention.config._attn_implementation != ATTN_IMPLEMENTATION:
                raise RuntimeError(f"{group} layer {i} did not switch to the {ATTN_IMPLEMENTATION!r} attention")
            setattr(attention, _SITE, (group, i))
            setattr(attention, _KERNEL, self.attention)

    @contextmanager
    def applied(self, main_model: nn.Module, params: dict[str, torch.Tensor]) -> Iterator[None]:
        """Inside the block, self-attention layer l of group g uses ``params[f"{g}.key"][:, l]`` / ``.value``.

        ``params[g]``: B x num_layers x length x (heads * head width); stored per layer as B x heads x length x
        head width. On exit (also on an exception) the previous state of each module is restored.
        """
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for group, i, attention, heads, head_dim in self.sites(main_model):
                if getattr(attention, _SITE, None) != (group, i):
                    raise RuntimeError("call PrefixTarget.prepare(main_model) before applied()")
                keys, values = params[f"{group}.key"], params[f"{group}.value"]
                shape = (keys.shape[0], keys.shape[2], heads, head_dim)
                saved.append((attention, getattr(attention, _PREFIX, None)))
                setattr(attention, _PREFIX, (keys[:, i].reshape(shape).transpose(1, 2),
                                             values[:, i].reshape(shape).transpose(1, 2)))
            yield
        finally:
            for attention, previous in reversed(saved):
                setattr(attention, _PREFIX, previous)

    def describe(self) -> dict[str, Any]:
        return {"length": self.length, "encoder": self.encoder, "decoder": self.decoder, "attention": self.attention}

    # ---------------------------------------------------------------------------------------------- adapter folder

    def export(self, folder: Path, params: dict[str, torch.Tensor], main_model: nn.Module,
               base_model_name_or_path: str | None, fusion_in_decoder: bool) -> dict[str, Any]:
        """Write ``prefix.safetensors`` (one num_layers x length x width tensor per slot group); return the config,
        which records the main model's shape so that :meth:`load` can refuse another model."""
        groups = [g.name for g in self.slot_groups(main_model)]
        atomic_save_tensors(Path(folder) / PREFIX_WEIGHTS, {g: params[g].detach().float() for g in groups})
        config = main_model.config
        return {"hypergen_adapter": "prefix", "length": self.length, "encoder": self.encoder, "decoder": self.decoder,
                **{key: getattr(config, key) for key in family_of(main_model).prefix_fields},
                "base_model_name_or_path": base_model_name_or_path, "fusion_in_decoder": fusion_in_decoder}

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any],
             main_model: nn.Module) -> tuple["PrefixTarget", dict[str, torch.Tensor]]:
        """Rebuild the target and its prefixes ({group: 1 x L x length x width}); the sides come from the tensors
        present. A config or tensor that does not fit ``main_model`` raises an error naming the file."""
        config_file, weights = Path(folder) / ADAPTER_CONFIG, Path(folder) / PREFIX_WEIGHTS
        model_config = main_model.config
        for key in family_of(main_model).prefix_fields:
            if key not in config:
                raise HypergenError(f"{config_file}: field {key!r} is missing")
            if config[key] != getattr(model_config, key):
                raise HypergenError(f"{config_file}: made for a main model with {key}={config[key]}, but this main "
                                    f"model has {key}={getattr(model_config, key)} (an adapter from another main "
                                    "model?)")
        length = config.get("length")
        if not isinstance(length, int) or length < 0:
            raise HypergenError(f"{config_file}: 'length' must be a non-negative integer, got {length!r}")
        state = read_safetensors(weights, "prefix adapter weights")
        target = cls(length=length, encoder="encoder.key" in state,
                     decoder="decoder.key" in state or "layers.key" in state)
        groups = target.slot_groups(main_model)
        if not groups or set(state) != {g.name for g in groups}:
            raise HypergenError(f"{weights}: holds {sorted(state)}; expected encoder/decoder key/value prefixes")
        for group in groups:
            want = (group.num_layers, group.rows, group.width)
            if tuple(state[group.name].shape) != want:
                raise HypergenError(f"{weights}: {group.name} has shape {tuple(state[group.name].shape)}, but the "
                                    f"main model needs {want} (an adapter from another main model?)")
        return target, {g.name: state[g.name][None] for g in groups}
