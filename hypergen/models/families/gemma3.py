"""Gemma 3 text models (``Gemma3ForCausalLM``, model type ``gemma3_text``): Llama's layout (``model.layers``,
q/k/v/o_proj, gate/up/down_proj, so the same sites and backbone) with Gemma's own attention, which prefixes go
through: queries scaled by ``query_pre_attn_scalar ** -0.5`` (passed as ``scaling``), the soft-cap of the scores
when the model passes one (``softcap``), and sliding-window layers (``layer_types``): transformers builds each
layer's mask (causal, or causal within the window) and the prefix columns prepended to it are visible to every
query, whatever its window. The hypernetwork's decode passes one full mask to every layer (the generated tokens
see every demo token; the demos themselves are encoded with the model's own sliding masks).
"""

from __future__ import annotations

from torch import nn
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

from ...registry import registry
from .base import seeded
from .llama import LlamaFamily, causal_widths

SLIDING_WINDOW = 4  # the tiny model's window: shorter than a test's sequences, so that it matters


@registry.families.register("gemma3")
class Gemma3Family(LlamaFamily):
    name = "gemma3"
    model_types = ("gemma3_text",)
    tiny_names = ("gemma3",)
    default_lora_targets = ("q_proj", "v_proj")
    attention = staticmethod(eager_attention_forward)  # Gemma 3's: scaling, softcap, grouped-query heads

    def describe(self, config) -> dict:
        return {**super().describe(config), "sliding_window": config.sliding_window,
                "query_pre_attn_scalar": config.query_pre_attn_scalar,
                "sliding_layers": sum(t == "sliding_attention" for t in config.layer_types or ())}

    def tiny(self, spec, vocab_size: int) -> nn.Module:
        """Every other layer sliding (window :data:`SLIDING_WINDOW`), queries scaled by 1/sqrt(2 d_kv) (not
        1/sqrt(d_kv)), final logits soft-capped at 30."""
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(spec.num_layers)]
        config = Gemma3TextConfig(vocab_size=spec.vocab_size or vocab_size, **causal_widths(spec),
                                  query_pre_attn_scalar=2 * spec.d_kv, sliding_window=SLIDING_WINDOW,
                                  layer_types=layer_types, final_logit_softcapping=30.0)
        return seeded(spec.seed, lambda: Gemma3ForCausalLM(config))
