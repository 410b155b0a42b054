"""GPT-2 (``GPT2LMHeadModel``): ``transformer.h`` blocks after token and learned absolute position embeddings
(``wte``, ``wpe``), a final ``ln_f``; its projections are Conv1D (weight d_in x d_out, peft's ``fan_in_fan_out``),
and ``attn.c_attn`` computes q, k and v in one fused projection (a LoRA on it adapts all three, as peft's default
target ``c_attn`` does). Sites: ``attn.c_attn`` (attn.q/k/v), ``attn.c_proj`` (attn.o), ``mlp.c_fc`` (mlp.in),
``mlp.c_proj`` (mlp.out); ``c_proj`` names both, as it does for peft. The hypernetwork is its first k blocks with
the embeddings and ``ln_f`` (:class:`..backbones.causal.CausalBackbone` over ``h``): a generated token at position
n_t + j gets that position's ``wpe`` row added. Prefixes go through GPT-2's eager attention after ``c_attn``.
"""

from __future__ import annotations

from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward

from ...registry import registry
from ..backbones.base import LinearSite, MainModelShape
from ..backbones.causal import GROUP, CausalBackbone, causal_layers, main_forward, main_generate, main_shape
from .base import Family, seeded

LAYERS = "h"
# (parent, peft's name) -> roles
PROJECTIONS = {("attn", "c_attn"): ("attn.q", "attn.k", "attn.v"), ("attn", "c_proj"): ("attn.o",),
               ("mlp", "c_fc"): ("mlp.in",), ("mlp", "c_proj"): ("mlp.out",)}


@registry.families.register("gpt2")
class GPT2Family(Family):
    name = "gpt2"
    model_types = ("gpt2",)
    tiny_names = ("gpt2",)
    default_lora_targets = ("c_attn",)
    target_vocabulary = (*dict.fromkeys(name for _, name in PROJECTIONS), *dict.fromkeys(sum(PROJECTIONS.values(), ())))
    prefix_fields = ("num_hidden_layers", "num_attention_heads", "hidden_size")
    attention = staticmethod(eager_attention_forward)

    def check(self, main_model: nn.Module) -> None:
        causal_layers(main_model, LAYERS)

    def shape(self, main_model: nn.Module) -> MainModelShape:
        return main_shape(main_model, LAYERS)

    def layers(self, main_model: nn.Module) -> list[nn.Module]:
        return list(causal_layers(main_model, LAYERS))

    def describe(self, config) -> dict:
        return {"architecture": "gpt2", "d_model": config.n_embd, "d_kv": config.n_embd // config.n_head,
                "d_ff": config.n_inner or 4 * config.n_embd, "num_heads": config.n_head, "num_layers": config.n_layer,
                "layers": str(config.n_layer), "vocab_size": config.vocab_size}

    def all_sites(self, main_model: nn.Module) -> list[tuple[LinearSite, nn.Module]]:
        """Per projection, then layer: ``transformer.h.{layer}.attn.c_attn``, ... (all Conv1D)."""
        layers, prefix = causal_layers(main_model, LAYERS), main_model.base_model_prefix
        sites = []
        for (parent, projection), roles in PROJECTIONS.items():
            template = f"{prefix}.{LAYERS}.{{layer}}.{parent}.{projection}"
            for layer, block in enumerate(layers):
                sites.append((LinearSite(f"{GROUP}.{parent}.{projection}", GROUP, layer, template, projection, roles,
                                         "self" if parent == "attn" else None, fan_in_fan_out=True),
                              getattr(getattr(block, parent), projection)))
        return sites

    def attention_modules(self, main_model: nn.Module) -> list[nn.Module]:
        return [block.attn for block in causal_layers(main_model, LAYERS)]

    def prefix_sites(self, main_model: nn.Module, encoder: bool, decoder: bool):
        if not decoder:
            return []
        return [(GROUP, i, block.attn, block.attn.num_heads, block.attn.head_dim)
                for i, block in enumerate(causal_layers(main_model, LAYERS))]

    def fusion_keys_values(self, main_model: nn.Module, states):
        """Each block's ``ln_1``, then the key and value thirds of its fused ``c_attn`` over the demos' states."""
        keys_values = []
        for block in causal_layers(main_model, LAYERS):
            attention = block.attn
            _, keys, values = attention.c_attn(block.ln_1(states)).split(attention.split_size, dim=-1)
            shape = (*states.shape[:2], -1, attention.head_dim)
            keys_values.append((keys.view(shape).transpose(1, 2), values.view(shape).transpose(1, 2)))
        return keys_values

    def backbone(self, main_model: nn.Module, decoder_layers: int, init_from_main: bool = True):
        return CausalBackbone(main_model, decoder_layers, init_from_main, attribute=LAYERS)

    def forward(self, main_model, fusion_states, input_ids, attention_mask, labels):
        with self.fused(main_model, fusion_states):
            return main_forward(main_model, input_ids, attention_mask, labels)

    def generate(self, main_model, fusion_states, input_ids, attention_mask, max_new_tokens, num_beams):
        with self.fused(main_model, fusion_states):
            return main_generate(main_model, input_ids, attention_mask, max_new_tokens, num_beams)

    def tiny(self, spec, vocab_size: int) -> nn.Module:
        """``d_model`` wide with ``num_heads`` heads (of width d_model / num_heads: ``d_kv`` does not apply),
        MLP width ``d_ff``, ``num_layers`` blocks, 1024 positions; pad 0, bos/eos 1."""
        config = GPT2Config(vocab_size=spec.vocab_size or vocab_size, n_positions=1024, n_embd=spec.d_model,
                            n_layer=spec.num_layers, n_head=spec.num_heads, n_inner=spec.d_ff,
                            resid_pdrop=spec.dropout_rate, embd_pdrop=spec.dropout_rate,
                            attn_pdrop=spec.dropout_rate, pad_token_id=0, bos_token_id=1, eos_token_id=1)
        return seeded(spec.seed, lambda: GPT2LMHeadModel(config))
