"""Generators: from the hypernetwork encoder's output e to hidden states laid out per main-model layer.

Both run the hypernetwork decoder H_dec (the first k layers of the main model's decoder, cross-attending to e):

* ``non_autoregressive`` (HyperTuning): h = H_dec(z; e) for a learnable z of 2p tokens, one bi-directional pass.
  Rows [:p] feed every encoder layer, rows [-p:] every decoder layer.
* ``autoregressive`` (HART, eq. in section 3.1): h_1 = H_dec(z; e), h_l = H_dec(h_{l-1}; e) for l = 2..L, with a
  learnable z of 2 tokens; each step's 2 output tokens feed encoder layer l (token 0) and decoder layer l
  (token 1). Steps attend to every earlier step through a KV cache, so the cost grows linearly in L, and
  gradients flow through the whole chain.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from ..registry import registry
from .base import GeneratedStates, Generator, MainModelShape


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``keep`` (bool, ... x q x k, True = visible) -> float mask with 0 where visible and the dtype's min elsewhere."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def run_decoder(decoder: nn.Module, inputs: torch.Tensor, encoder_states: torch.Tensor, encoder_mask: torch.Tensor,
                self_mask: torch.Tensor | None = None, cache: EncoderDecoderCache | None = None,
                output_attentions: bool = False, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass of the hypernetwork decoder (a ``T5Stack``) over ``inputs`` (T x n x d_h, used as embeddings).

    ``inputs`` are used as they are: the caller applies the decoder's dropout to what is new (the learnable z),
    not to states fed back from an earlier step, which already went through the output dropout here (a fed-back
    state is dropped out once, as the T5 stack drops its embeddings once).

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


@registry.generators.register("non_autoregressive.v1")
class NonAutoregressiveGenerator(Generator):
    """HyperTuning: z is 2p learnable tokens (``prefix_rows`` = p), decoded in one bi-directional pass.

    Output: states T x 2p x d_h; rows [:p] -> every encoder layer, rows [p:] -> every decoder layer.
    """

    autoregressive = False

    def __init__(self, init_std: float = 1.0) -> None:
        super().__init__()
        self.init_std = init_std
        self.z: nn.Parameter | None = None
        self.p = 0  # set by build

    @property
    def rows_per_layer(self) -> int:
        """p: the same p rows feed every layer of a side (0 until built)."""
        return self.p

    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        self.p = max(prefix_rows, 1)
        self.z = nn.Parameter(torch.randn(2 * self.p, d_model) * self.init_std)

    def forward(self, decoder, encoder_states, encoder_mask, shape, output_attentions=False,
                checkpoint=False) -> GeneratedStates:
        num_tasks = encoder_states.shape[0]
        p = self.rows_per_layer
        z = decoder.dropout(self.z.to(encoder_states.dtype).expand(num_tasks, -1, -1))  # T x 2p x d_h
        states, attentions = run_decoder(decoder, z, encoder_states, encoder_mask, self_mask=None,
                                         output_attentions=output_attentions, checkpoint=checkpoint)
        rows = {
            "encoder": [list(range(p))] * shape.num_encoder_layers,
            "decoder": [list(range(p, 2 * p))] * shape.num_decoder_layers,
        }
        return GeneratedStates(states, rows, attentions)


@registry.generators.register("autoregressive.v1")
class AutoregressiveGenerator(Generator):
    """HART: z is 2 learnable tokens; L = max(L_enc, L_dec) decoding steps, step l fed step l-1's output.

    Output: states T x 2L x d_h where rows 2l and 2l+1 are h_l (feeding encoder layer l and decoder layer l).
    ``reverse=True`` generates the layers in reverse order (step 1 produces the last layer's states).
    ``use_cache=False`` recomputes the whole prefix of steps at each step with a block-causal mask: the same
    result, quadratic cost; kept as the reference the cached path is tested against.
    """

    autoregressive = True
    rows_per_layer = 1  # row 2l feeds encoder layer l, row 2l+1 decoder layer l

    def __init__(self, init_std: float = 1.0, reverse: bool = False, use_cache: bool = True) -> None:
        super().__init__()
        self.init_std = init_std
        self.reverse = reverse
        self.use_cache = use_cache
        self.z: nn.Parameter | None = None

    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        self.z = nn.Parameter(torch.randn(2, d_model) * self.init_std)

    def forward(self, decoder, encoder_states, encoder_mask, shape, output_attentions=False,
                checkpoint=False) -> GeneratedStates:
        num_tasks = encoder_states.shape[0]
        steps = max(shape.num_encoder_layers, shape.num_decoder_layers)
        # z is dropped out once, here; each later step's input is the previous step's output h_{l-1} exactly as
        # the projector sees it (already dropped out once, by run_decoder's output dropout)
        step_input = decoder.dropout(self.z.to(encoder_states.dtype).expand(num_tasks, -1, -1))  # T x 2 x d_h
        outputs: list[torch.Tensor] = []
        if self.use_cache:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            for _ in range(steps):
                # the 2 tokens of step l see each other and all earlier steps (held in the cache): no mask needed
                h, attentions = run_decoder(decoder, step_input, encoder_states, encoder_mask, cache=cache,
                                            output_attentions=output_attentions, checkpoint=checkpoint)
                outputs.append(h)
                step_input = h
        else:
            inputs = [step_input]
            for step in range(steps):
                sequence = torch.cat(inputs, dim=1)  # T x 2(step+1) x d_h
                h, attentions = run_decoder(decoder, sequence, encoder_states, encoder_mask,
                                            self_mask=self.block_causal_mask(step + 1, sequence.dtype),
                                            output_attentions=output_attentions, checkpoint=checkpoint)
                outputs.append(h[:, -2:])
                inputs.append(h[:, -2:])
        states = torch.cat(outputs, dim=1)  # T x 2L x d_h
        order = list(range(steps))[::-1] if self.reverse else list(range(steps))
        rows = {
            "encoder": [[2 * order[layer]] for layer in range(shape.num_encoder_layers)],
            "decoder": [[2 * order[layer] + 1] for layer in range(shape.num_decoder_layers)],
        }
        return GeneratedStates(states, rows, attentions if output_attentions else None)

    @staticmethod
    def block_causal_mask(steps: int, dtype: torch.dtype) -> torch.Tensor:
        """1 x 1 x 2s x 2s additive mask: token i sees token j iff step(j) <= step(i)."""
        step_of = torch.arange(2 * steps) // 2
        return additive_mask(step_of[None, :] <= step_of[:, None], dtype)[None, None]
