"""The causal-LM backbone (Llama, Qwen2, Mistral, Gemma 3, GPT-2; their families in hypergen/models/families/
declare the rest): the hypernetwork is the main model's first k layers plus
its final norm, reading one causal sequence.

    encode(demos)   run the demos through the k layers; keep each layer's keys/values (the demo cache)
    decode(inputs)  continue the sequence after the demos: ``inputs`` attend to the (unpadded) demo tokens, to the
                    generated steps in the cache, and to each other as ``self_mask`` says (all, by default)

Positions (rotary): task t's generated token j sits at ``n_t + j`` (n_t: its number of real demo tokens), so the
generated states continue the demos whatever their padding. One group, "layers" (HART: 1 token per step,
HyperTuning: p tokens). The main-model side (:func:`main_forward`, :func:`main_generate`) reads ``[query ; answer]``
with the query left-aligned (left padding, also for ``generate()``) and scores the answer tokens only.
Fusion-in-decoder's analogue (there is no cross-attention): the encoded demos become a key/value prefix of every
main-model layer, :meth:`hypergen.models.families.base.Family.fused`, around these functions.
"""

from __future__ import annotations

import copy

import torch
import torch.utils.checkpoint
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutput

from ..few_rows import use_few_rows_linears
from .base import Backbone, Context, MainModelShape, additive_mask, copy_config_as_eager

GROUP = "layers"


def causal_layers(main_model: nn.Module, attribute: str = "layers") -> nn.ModuleList:
    """The decoder layers of a causal LM: ``base_model.layers`` (Llama, Qwen2, Mistral, Gemma 3) or another
    ``attribute`` of its base model (GPT-2: ``h``)."""
    layers = getattr(main_model.base_model, attribute, None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"main_model: {type(main_model).__name__} has no base_model.{attribute}")
    return layers


def main_shape(main_model: nn.Module, attribute: str = "layers") -> MainModelShape:
    return MainModelShape.of(**{GROUP: len(causal_layers(main_model, attribute))})


class CausalBackbone(Backbone):
    """A copy of the main model's embeddings (GPT-2: and learned positions), first ``decoder_layers`` layers (its
    base model's ``attribute``) and final norm (``modules``: "decoder"), initialised from the main model's weights
    unless ``init_from_main`` is false."""

    supports_fusion = True  # the analogue: Family.fused

    def __init__(self, main_model: nn.Module, decoder_layers: int, init_from_main: bool = True,
                 attribute: str = "layers") -> None:
        layers = causal_layers(main_model, attribute)
        if decoder_layers > len(layers):
            raise ValueError(f"hypernetwork.decoder_layers: {decoder_layers} exceeds the main model's "
                             f"{len(layers)} layers")
        self.shape = main_shape(main_model, attribute)
        self.d_model = main_model.config.hidden_size
        decoder = copy.deepcopy(main_model.base_model)
        setattr(decoder, attribute, nn.ModuleList(list(getattr(decoder, attribute))[:decoder_layers]))
        copy_config_as_eager(decoder)
        decoder.config.num_hidden_layers = decoder_layers
        if getattr(decoder.config, "layer_types", None):
            decoder.config.layer_types = decoder.config.layer_types[:decoder_layers]
        if not init_from_main:
            decoder.apply(main_model._init_weights)
        use_few_rows_linears(decoder)  # HART's steps feed it T rows at a time
        self.decoder = decoder
        self.num_layers = decoder_layers
        self.modules = {"decoder": decoder}

    def encode(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor) -> Context:
        cache = DynamicCache()
        states = self.decoder(input_ids=demo_ids, attention_mask=demo_mask, cache=cache,
                              use_cache=True).last_hidden_state  # T x n_d x d_h
        past = [(layer.keys, layer.values) for layer in cache.layers]  # each T x kv_heads x n_d x d_head
        return Context(states, demo_mask, past)

    def new_cache(self, context: Context) -> DynamicCache:
        return DynamicCache(ddp_cache_data=context.past)

    def context_keys(self, context: Context) -> int:
        return context.mask.shape[1]  # the demos' (padded) keys come first in every generated token's softmax

    def decode(self, inputs, context, cache=None, self_mask=None, output_attentions=False, checkpoint=False):
        if cache is not None:
            return self._decode(inputs, context, cache, self_mask, output_attentions)

        def one_pass(x: torch.Tensor):  # a fresh cache per call: a recomputation in backward writes its own
            return self._decode(x, context, self.new_cache(context), self_mask, output_attentions)

        if checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(one_pass, inputs, use_reentrant=False)
        return one_pass(inputs)

    def _decode(self, inputs, context, cache, self_mask, output_attentions):
        num_tasks, n, _ = inputs.shape
        n_d = context.mask.shape[1]
        earlier = cache.get_seq_length() - n_d  # generated tokens already in the cache
        demo_keep = context.mask.bool()[:, None, None, :].expand(num_tasks, 1, n, n_d)
        generated = (torch.zeros(1, 1, n, earlier + n, dtype=inputs.dtype, device=inputs.device)
                     if self_mask is None else self_mask.to(inputs.dtype))
        mask = torch.cat([additive_mask(demo_keep, inputs.dtype), generated.expand(num_tasks, 1, n, -1)], dim=-1)
        positions = context.mask.sum(1, keepdim=True) + earlier + torch.arange(n, device=inputs.device)  # T x n
        out = self.decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, cache=cache,
                           use_cache=True, output_attentions=output_attentions)
        attentions = out.attentions[-1] if output_attentions and out.attentions else None
        return out.last_hidden_state, attentions


# ------------------------------------------------------------------------------------- the frozen main model side

def left_align(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right- (or any-) padded ``ids``/``mask`` (B x n) with the padding moved to the left, order kept."""
    order = torch.argsort(mask.long(), dim=1, stable=True)
    return ids.gather(1, order), mask.gather(1, order)


def main_forward(main_model, input_ids, attention_mask, labels) -> CausalLMOutput:
    """The LM over ``[query ; answer]`` (query ``input_ids`` B x n_x left-aligned, answer ``labels`` B x n_y,
    -100 = padding): ``.logits`` B x n_y x V, row t predicting answer token t, and ``.loss`` the mean CE over the
    answer tokens only."""
    ids, mask = left_align(input_ids, attention_mask)
    answer_mask = (labels != -100).to(mask.dtype)
    ids = torch.cat([ids, labels.clamp(min=0)], dim=1)
    mask = torch.cat([mask, answer_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    n_y = labels.shape[1]
    # only the positions that predict an answer token go through the LM head (V x d, a fifth of SmolLM2's products
    # over every position): the last n_y + 1 positions are [last query token ; answer], of which all but the last
    logits = main_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        logits_to_keep=n_y + 1).logits[:, :n_y]
    loss = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=-100)
    return CausalLMOutput(loss=loss, logits=logits)


def main_generate(main_model, input_ids, attention_mask, max_new_tokens: int, num_beams: int) -> torch.Tensor:
    """Greedy (or beam) continuation of the left-padded query: B x n_out new token ids."""
    ids, mask = left_align(input_ids, attention_mask)
    out = main_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                              num_beams=num_beams, do_sample=False)
    return out[:, ids.shape[1]:]
