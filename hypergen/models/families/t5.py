"""T5 (and mT5): an encoder-decoder; the hypernetwork is its encoder plus its first k decoder layers
(:class:`..backbones.t5.T5Backbone`), and the main model can fuse the encoded demos into its cross-attention.

Sites: q, k, v, o of the encoder and decoder self-attention (``layer.0.SelfAttention``) and of the decoder
cross-attention (``layer.1.EncDecAttention``); prefixes go into self-attention only, through T5's eager attention.
"""

from __future__ import annotations

from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import eager_attention_forward

from ...registry import registry
from ..backbones.t5 import T5Backbone, main_forward, main_generate, main_layers, main_shape
from ..backbones.base import LinearSite, MainModelShape
from .base import Family, seeded

PROJECTIONS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o"}  # peft's names -> roles
ATTENTIONS = {"self": (0, "SelfAttention"), "cross": (1, "EncDecAttention")}  # layer index in a block, name


def tiny_t5(spec, vocab_size: int) -> T5ForConditionalGeneration:
    """A T5 of ``spec``'s widths with random weights (seeded by ``spec.seed``); ``spec.vocab_size`` when set,
    else ``vocab_size`` (the tokenizer's), embedding rows."""
    config = T5Config(
        vocab_size=spec.vocab_size or vocab_size, d_model=spec.d_model, d_kv=spec.d_kv, d_ff=spec.d_ff,
        num_layers=spec.num_layers, num_decoder_layers=spec.num_decoder_layers, num_heads=spec.num_heads,
        dropout_rate=spec.dropout_rate, feed_forward_proj=spec.feed_forward_proj, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )
    return seeded(spec.seed, lambda: T5ForConditionalGeneration(config))


@registry.families.register("t5")
class T5Family(Family):
    name = "t5"
    model_types = ("t5", "mt5")
    tiny_names = ("t5",)
    encoder_decoder = True
    attention_kinds = ("self", "cross")
    peft_task_type = "SEQ_2_SEQ_LM"
    default_lora_targets = ("q", "v")
    target_vocabulary = (*PROJECTIONS, *PROJECTIONS.values())
    prefix_fields = ("num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_model")
    attention = staticmethod(eager_attention_forward)

    def check(self, main_model: nn.Module) -> None:
        if not hasattr(main_model, "encoder") or not hasattr(main_model.encoder, "block"):
            raise ValueError(f"main_model: {type(main_model).__name__} is not a T5-family encoder-decoder model")

    def shape(self, main_model: nn.Module) -> MainModelShape:
        return main_shape(main_model)

    def config_shape(self, config) -> dict:
        return {"num_layers": config.num_layers, "num_decoder_layers": config.num_decoder_layers,
                "d_model": config.d_model, "num_heads": config.num_heads, "d_kv": config.d_kv,
                "vocab_size": config.vocab_size}

    def layers(self, main_model: nn.Module) -> list[nn.Module]:
        return main_layers(main_model)

    def describe(self, config) -> dict:
        return {"architecture": "t5", "d_model": config.d_model, "d_kv": config.d_kv, "d_ff": config.d_ff,
                "num_heads": config.num_heads, "num_layers": config.num_layers,
                "num_decoder_layers": config.num_decoder_layers,
                "layers": f"{config.num_layers}+{config.num_decoder_layers}", "vocab_size": config.vocab_size,
                "feed_forward_proj": config.feed_forward_proj}

    def all_sites(self, main_model: nn.Module) -> list[tuple[LinearSite, nn.Module]]:
        """Per side, attention, projection, then layer: e.g. ``encoder.block.{layer}.layer.0.SelfAttention.q``."""
        sites = []
        for side in ("encoder", "decoder"):
            stack = getattr(main_model, side, None)
            for att, (index, name) in ATTENTIONS.items():
                if stack is None or (side == "encoder" and att == "cross"):
                    continue
                for projection, role in PROJECTIONS.items():
                    template = f"{side}.block.{{layer}}.layer.{index}.{name}.{projection}"
                    for layer, block in enumerate(stack.block):
                        sites.append((LinearSite(f"{side}.{att}.{projection}", side, layer, template, projection,
                                                 (role,), att), getattr(getattr(block.layer[index], name), projection)))
        return sites

    def attention_modules(self, main_model: nn.Module) -> list[nn.Module]:
        return [layer for stack in (main_model.encoder, main_model.decoder) for block in stack.block
                for layer in (block.layer[0].SelfAttention, getattr(block.layer[1], "EncDecAttention", None)) if layer]

    def prefix_sites(self, main_model: nn.Module, encoder: bool, decoder: bool):
        """Every self-attention layer of the chosen sides (cross-attention never gets a prefix)."""
        sites = []
        for side, on in (("encoder", encoder), ("decoder", decoder)):
            stack = getattr(main_model, side, None)
            if on and stack is not None:
                for i, block in enumerate(stack.block):
                    attention = block.layer[0].SelfAttention
                    sites.append((side, i, attention, attention.n_heads, attention.key_value_proj_dim))
        return sites

    def backbone(self, main_model: nn.Module, decoder_layers: int, init_from_main: bool = True):
        return T5Backbone(main_model, decoder_layers, init_from_main)

    def forward(self, main_model, fusion_states, input_ids, attention_mask, labels):
        return main_forward(main_model, fusion_states, input_ids, attention_mask, labels)

    def generate(self, main_model, fusion_states, input_ids, attention_mask, max_new_tokens, num_beams):
        return main_generate(main_model, fusion_states, input_ids, attention_mask, max_new_tokens, num_beams)

    def tiny(self, spec, vocab_size: int) -> nn.Module:
        return tiny_t5(spec, vocab_size)
