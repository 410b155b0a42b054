"""The T5 backbone (the paper's): the hypernetwork is the main encoder plus the first k decoder layers.

    encode(demos)   e = Enc_hyper(demos)                      T x n_d x d_h
    decode(inputs)  H_dec(inputs; e): the decoder layers over ``inputs``, cross-attending to e

Which projections, attention modules and config fields a T5 has is its family's (hypergen/models/families/t5.py).
Groups: "encoder" and "decoder" (HART: 2 tokens per step; HyperTuning: 2p tokens). The main model side
(:func:`main_forward`, :func:`main_generate`) runs the frozen T5 with fusion-in-decoder (appendix 6.1.3): the main
decoder cross-attends to [e ; Enc_main(x)].
"""

from __future__ import annotations

import copy

import torch
import torch.utils.checkpoint
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ..few_rows import use_few_rows_linears
from .base import Backbone, Context, MainModelShape, additive_mask, copy_config_as_eager


def main_layers(main_model: nn.Module) -> list[nn.Module]:
    """The main model's blocks, encoder then decoder (what activation recompute wraps)."""
    return [*main_model.encoder.block, *main_model.decoder.block]


def main_shape(main_model: nn.Module) -> MainModelShape:
    config = main_model.config
    return MainModelShape.of(encoder=config.num_layers,
                             decoder=getattr(config, "num_decoder_layers", None) or config.num_layers)


class T5Backbone(Backbone):
    """A copy of the main encoder and of the first ``decoder_layers`` decoder layers (``modules``: "encoder",
    "decoder"), initialised from the main model's weights (appendix 6.1.1) unless ``init_from_main`` is false."""

    supports_fusion = True

    def __init__(self, main_model: nn.Module, decoder_layers: int, init_from_main: bool = True) -> None:
        if decoder_layers > len(main_model.decoder.block):
            raise ValueError(f"hypernetwork.decoder_layers: {decoder_layers} exceeds the main model's "
                             f"{len(main_model.decoder.block)} decoder layers")
        self.shape = main_shape(main_model)
        self.d_model = main_model.config.d_model
        encoder = copy.deepcopy(main_model.encoder)
        decoder = copy.deepcopy(main_model.decoder)
        decoder.block = nn.ModuleList(list(decoder.block)[:decoder_layers])
        decoder.embed_tokens = None  # the generator feeds z and states as embeddings
        for stack in (encoder, decoder):
            copy_config_as_eager(stack)
            if not init_from_main:
                stack.apply(main_model._init_weights)
        use_few_rows_linears(decoder)  # HART's steps feed it T x 2 rows at a time
        self.encoder, self.decoder = encoder, decoder
        self.num_layers = decoder_layers
        self.modules = {"encoder": encoder, "decoder": decoder}

    def encode(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor) -> Context:
        states = self.encoder(input_ids=demo_ids, attention_mask=demo_mask).last_hidden_state  # T x n_d x d_h
        return Context(states, demo_mask)

    def new_cache(self, context: Context) -> EncoderDecoderCache:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def input_dropout(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.decoder.dropout(inputs)  # T5 drops out its input embeddings once

    def decode(self, inputs, context, cache=None, self_mask=None, output_attentions=False, checkpoint=False):
        return run_decoder(self.decoder, inputs, context.states, context.mask, self_mask=self_mask, cache=cache,
                           output_attentions=output_attentions, checkpoint=checkpoint)


def run_decoder(decoder: nn.Module, inputs: torch.Tensor, encoder_states: torch.Tensor, encoder_mask: torch.Tensor,
                self_mask: torch.Tensor | None = None, cache: EncoderDecoderCache | None = None,
                output_attentions: bool = False, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass of the hypernetwork decoder (a ``T5Stack``) over ``inputs`` (T x n x d_h, used as embeddings).

    ``inputs`` are used as they are: the generator drops out what is new (its learnable z, through
    :meth:`T5Backbone.input_dropout`), not states fed back from an earlier step, which already went through the
    output dropout here (a fed-back state is dropped out once, as the T5 stack drops its embeddings once).

    ``self_mask``: additive T x 1 x n x n_total mask for self-attention (None = every key visible);
    ``encoder_mask``: T x n_d with 1 for demo tokens. ``checkpoint``: recompute each block's activations in the
    backward pass (training.gradient_checkpointing.hypernetwork); never with a ``cache`` (written in place: a
    recomputation would write it twice), see hypergen/training/activation_recompute.py. Returns the
    final-layer-normed states T x n x d_h and, if asked, the last layer's self-attention weights
    T x heads x n x n_total.
    """
    cross_mask = additive_mask(encoder_mask[:, None, None, :].bool(), inputs.dtype)
    hidden = inputs
    position_bias = cross_bias = None
    attentions = None
    for i, block in enumerate(decoder.block):
        if output_attentions and i == len(decoder.block) - 1:
            attentions = _self_attention_weights(block, hidden, self_mask, position_bias, cache)
        if checkpoint and cache is None and torch.is_grad_enabled():
            hidden, position_bias, cross_bias = torch.utils.checkpoint.checkpoint(
                block, hidden, self_mask, position_bias, encoder_states, cross_mask, cross_bias, use_reentrant=False)
        else:
            hidden, position_bias, cross_bias = block(
                hidden, self_mask, position_bias, encoder_states, cross_mask, cross_bias, cache=cache
            )
    return decoder.dropout(decoder.final_layer_norm(hidden)), attentions


def _self_attention_weights(block, hidden, self_mask, position_bias, cache) -> torch.Tensor:
    """Softmax self-attention weights of ``block`` for ``hidden`` (recomputed; only for analysis)."""
    layer = block.layer[0]
    attn = layer.SelfAttention
    normed = layer.layer_norm(hidden)
    q = attn.q(normed).view(*normed.shape[:2], attn.n_heads, attn.key_value_proj_dim).transpose(1, 2)
    k = attn.k(normed).view(*normed.shape[:2], attn.n_heads, attn.key_value_proj_dim).transpose(1, 2)
    if cache is not None and cache.get_seq_length(attn.layer_idx) > 0:
        layer_cache = cache.self_attention_cache.layers[attn.layer_idx]
        k = torch.cat([layer_cache.keys, k], dim=2)
    scores = q @ k.transpose(-1, -2)
    if position_bias is None and attn.has_relative_attention_bias:  # the first block computes the bias itself
        q_len, k_len = scores.shape[-2:]
        position_bias = attn.compute_bias(k_len, k_len, scores.device)[..., -q_len:, :]  # 1 x heads x q x k
    if position_bias is not None:
        scores = scores + position_bias[..., -scores.shape[-1]:]
    if self_mask is not None:
        scores = scores + self_mask
    return scores.softmax(-1)


# ------------------------------------------------------------------------------------- the frozen main model side

def main_encode(main_model, fusion_states: Context | None, input_ids, attention_mask) -> tuple[BaseModelOutput, torch.Tensor]:
    """Main encoder output B x (n_d +) n_x x d (with fusion, prefixed by the hypernetwork encoder's states
    ``fusion_states``, one row per example) and its mask B x (n_d +) n_x."""
    states = main_model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask
    if fusion_states is not None:
        fusion_states = fusion_states.per_example()
        states = torch.cat([fusion_states.states.to(states.dtype), states], dim=1)
        mask = torch.cat([fusion_states.mask.to(mask.dtype), mask], dim=1)
    return BaseModelOutput(last_hidden_state=states), mask


def main_forward(main_model, fusion_states: Context | None, input_ids, attention_mask, labels):
    """Teacher-forced on ``labels`` (B x n_y): ``.loss`` (mean CE over target tokens) and ``.logits`` B x n_y x V.

    With fusion states kept per task (``fusion_states.rows``), the main decoder's cross-attention keys and values of
    the demos are computed once per task (:func:`fused_cross_attention`) rather than once per example: the same
    numbers, 1/q of that work for q queries per task."""
    if fusion_states is not None and fusion_states.rows is not None and _cross_projections_plain(main_model):
        return _forward_with_fused_cross_attention(main_model, fusion_states, input_ids, attention_mask, labels)
    encoder_outputs, mask = main_encode(main_model, fusion_states, input_ids, attention_mask)
    return main_model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels)


def _cross_projections_plain(main_model) -> bool:
    """Whether the decoder's cross-attention key and value projections are plain linear maps (no hooks: a LoRA on
    them adds each example's own low-rank term, so their input must stay one row per example)."""
    return all(not (p._forward_hooks or p._forward_pre_hooks)
               for block in main_model.decoder.block
               for p in (block.layer[1].EncDecAttention.k, block.layer[1].EncDecAttention.v))


def fused_cross_attention(main_model, fusion_states: Context, query_states: torch.Tensor) -> EncoderDecoderCache:
    """The main decoder's cross-attention keys and values over [e ; Enc_main(x)], layer by layer, as a filled cache.

    ``fusion_states``: e, T x n_d x d per task, ``rows`` (B) each example's task; ``query_states``: Enc_main(x),
    B x n_x x d. Layer l's keys are [k_l(e)[rows] ; k_l(Enc_main(x))], B x heads x (n_d + n_x) x d_kv (values
    alike): k_l is linear, so projecting each task's demos once and then selecting the rows equals projecting the
    B per-example copies."""
    demos = fusion_states.states.to(query_states.dtype)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    for layer, block in enumerate(main_model.decoder.block):
        attention = block.layer[1].EncDecAttention
        keys, values = ([_heads(attention, project(demos)).index_select(0, fusion_states.rows),
                         _heads(attention, project(query_states))] for project in (attention.k, attention.v))
        cache.cross_attention_cache.update(torch.cat(keys, dim=2), torch.cat(values, dim=2), layer)
        cache.is_updated[layer] = True
    return cache


def _heads(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """n x len x (heads * d_kv) -> n x heads x len x d_kv, as ``attention`` splits its keys and values."""
    return x.view(*x.shape[:2], attention.n_heads, attention.key_value_proj_dim).transpose(1, 2)


def _forward_with_fused_cross_attention(main_model, fusion_states: Context, input_ids, attention_mask, labels):
    query_states = main_model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    cache = fused_cross_attention(main_model, fusion_states, query_states)
    mask = torch.cat([fusion_states.mask.index_select(0, fusion_states.rows).to(attention_mask.dtype),
                      attention_mask], dim=1)
    # the decoder reads the encoder output's shape only (its cross-attention keys and values are in the cache)
    shape_only = query_states.new_zeros(()).expand(query_states.shape[0], mask.shape[1], query_states.shape[2])
    return main_model(encoder_outputs=BaseModelOutput(last_hidden_state=shape_only), attention_mask=mask,
                      labels=labels, cache=cache, use_cache=True)


def main_generate(main_model, fusion_states: Context | None, input_ids, attention_mask, max_new_tokens: int,
                  num_beams: int) -> torch.Tensor:
    """Greedy (or beam) decoding: B x n_out token ids."""
    encoder_outputs, mask = main_encode(main_model, fusion_states, input_ids, attention_mask)
    return main_model.generate(encoder_outputs=encoder_outputs, attention_mask=mask, max_new_tokens=max_new_tokens,
                               num_beams=num_beams, do_sample=False)
