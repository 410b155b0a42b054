"""Llama-style causal LMs (Llama, Qwen2, Mistral): ``model.layers``, each with ``self_attn`` (q/k/v/o_proj,
grouped-query heads, rotary positions) and a gated ``mlp`` (gate/up/down_proj); the hypernetwork is its first k
layers and final norm (:class:`..backbones.causal.CausalBackbone`). Prefix keys are generated after rotary
embedding: they are not rotated, so they are visible to every query at no position. Other families that share
this layout (:mod:`.gemma3`) subclass :class:`LlamaFamily`.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config
from transformers import Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import eager_attention_forward

from ...errors import HypergenError
from ...registry import registry
from ..backbones.base import LinearSite, MainModelShape
from ..backbones.causal import GROUP, CausalBackbone, causal_layers, main_forward, main_generate, main_shape
from .base import Family, seeded

# peft's names -> (parent module, role)
PROJECTIONS = {"q_proj": ("self_attn", "attn.q"), "k_proj": ("self_attn", "attn.k"),
               "v_proj": ("self_attn", "attn.v"), "o_proj": ("self_attn", "attn.o"),
               "gate_proj": ("mlp", "mlp.in"), "up_proj": ("mlp", "mlp.in"), "down_proj": ("mlp", "mlp.out")}
ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                 "mistral": (MistralConfig, MistralForCausalLM)}


def causal_widths(spec) -> dict:
    """The config keywords every Llama-style tiny model shares: ``d_model`` is the hidden size, ``d_kv`` the head
    width, ``d_ff`` the MLP width, ``num_layers`` the layer count, ``num_key_value_heads`` (default ``num_heads``)
    the key/value heads; pad 0 and eos 1 as the ByT5 tokenizer."""
    kv_heads = spec.num_key_value_heads or spec.num_heads
    if spec.num_heads % kv_heads:
        raise HypergenError(f"main_model.tiny.num_key_value_heads: {kv_heads} does not divide num_heads "
                            f"{spec.num_heads}")
    return dict(hidden_size=spec.d_model, intermediate_size=spec.d_ff, num_hidden_layers=spec.num_layers,
                num_attention_heads=spec.num_heads, num_key_value_heads=kv_heads, head_dim=spec.d_kv,
                attention_dropout=spec.dropout_rate, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1,
                bos_token_id=None)


@registry.families.register("llama")
class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "qwen2", "mistral")
    tiny_names = ("llama", "qwen2", "mistral")
    default_lora_targets = ("q_proj", "v_proj")
    target_vocabulary = (*PROJECTIONS, *dict.fromkeys(role for _, role in PROJECTIONS.values()))
    prefix_fields = ("num_hidden_layers", "num_key_value_heads", "head_dim", "hidden_size")
    attention = staticmethod(eager_attention_forward)  # grouped-query heads repeated; shared by Qwen2, Mistral

    def check(self, main_model: nn.Module) -> None:
        causal_layers(main_model)

    def shape(self, main_model: nn.Module) -> MainModelShape:
        return main_shape(main_model)

    def layers(self, main_model: nn.Module) -> list[nn.Module]:
        return list(causal_layers(main_model))

    def describe(self, config) -> dict:
        return {"architecture": config.model_type, "d_model": config.hidden_size, "d_kv": config.head_dim,
                "d_ff": config.intermediate_size, "num_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_key_value_heads, "num_layers": config.num_hidden_layers,
                "layers": str(config.num_hidden_layers), "vocab_size": config.vocab_size}

    def all_sites(self, main_model: nn.Module) -> list[tuple[LinearSite, nn.Module]]:
        """Per projection, then layer: ``model.layers.{layer}.self_attn.q_proj``, ..."""
        layers, prefix = causal_layers(main_model), main_model.base_model_prefix
        sites = []
        for projection, (parent, role) in PROJECTIONS.items():
            template = f"{prefix}.layers.{{layer}}.{parent}.{projection}"
            for layer, block in enumerate(layers):
                sites.append((LinearSite(f"{GROUP}.{projection}", GROUP, layer, template, projection, (role,),
                                         "self" if parent == "self_attn" else None),
                              getattr(getattr(block, parent), projection)))
        return sites

    def attention_modules(self, main_model: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in causal_layers(main_model)]

    def prefix_sites(self, main_model: nn.Module, encoder: bool, decoder: bool):
        """Every layer when ``decoder`` is on (a causal LM's layers are decoder layers; ``encoder`` does not
        apply)."""
        if not decoder:
            return []
        return [(GROUP, i, layer.self_attn, main_model.config.num_key_value_heads, layer.self_attn.head_dim)
                for i, layer in enumerate(causal_layers(main_model))]

    def fusion_keys_values(self, main_model: nn.Module, states):
        """Each layer's ``input_layernorm``, ``k_proj`` (then ``k_norm`` where the family has one: Gemma 3) and
        ``v_proj`` over the demos' states."""
        keys_values = []
        for layer in causal_layers(main_model):
            attention, hidden = layer.self_attn, layer.input_layernorm(states)
            shape = (*states.shape[:2], -1, attention.head_dim)
            keys, values = attention.k_proj(hidden).view(shape), attention.v_proj(hidden).view(shape)
            if getattr(attention, "k_norm", None) is not None:
                keys = attention.k_norm(keys)
            keys_values.append((keys.transpose(1, 2), values.transpose(1, 2)))
        return keys_values

    def backbone(self, main_model: nn.Module, decoder_layers: int, init_from_main: bool = True):
        return CausalBackbone(main_model, decoder_layers, init_from_main)

    def forward(self, main_model, fusion_states, input_ids, attention_mask, labels):
        with self.fused(main_model, fusion_states):
            return main_forward(main_model, input_ids, attention_mask, labels)

    def generate(self, main_model, fusion_states, input_ids, attention_mask, max_new_tokens, num_beams):
        with self.fused(main_model, fusion_states):
            return main_generate(main_model, input_ids, attention_mask, max_new_tokens, num_beams)

    def tiny(self, spec, vocab_size: int) -> nn.Module:
        config_class, model_class = ARCHITECTURES[spec.architecture]
        extra = {"sliding_window": None} if spec.architecture == "mistral" else {}
        config = config_class(vocab_size=spec.vocab_size or vocab_size, tie_word_embeddings=False,
                              **causal_widths(spec), **extra)
        return seeded(spec.seed, lambda: model_class(config))
