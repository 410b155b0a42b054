"""``blockwise.v1``: HART's autoregressive generator, one block of main-model layers per decoding step.

With b = ``block_size``, z is 2b learnable tokens and step s (s = 0 .. ceil(L/b) - 1) decodes 2b tokens fed the
previous step's 2b output tokens (z at the first step); token 2j of step s feeds encoder layer l = s*b + j and
token 2j+1 feeds decoder layer l. The tokens of a block see each other (bi-directionally) and every earlier step
through the KV cache, exactly as in :class:`hypergen.components.generators.AutoregressiveGenerator`, which is the
case b = 1. Larger blocks mean fewer sequential steps (L/b) at the price of less step-to-step conditioning.

Output: states T x 2L x d_h with rows 2l and 2l+1 feeding encoder layer l and decoder layer l (when L is not a
multiple of b, the surplus tokens of the last block are dropped).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from hypergen.components.base import GeneratedStates, Generator, MainModelShape
from hypergen.components.generators import run_decoder
from hypergen.errors import RecipeError


class BlockwiseGenerator(Generator):
    """Block-wise autoregressive generation: ``block_size`` main-model layers per decoding step."""

    autoregressive = True
    rows_per_layer = 1  # token 2j of a step feeds encoder layer s*b + j, token 2j+1 decoder layer s*b + j

    def __init__(self, block_size: int = 2, init_std: float = 1.0) -> None:
        super().__init__()
        if not isinstance(block_size, int) or block_size < 1:
            raise RecipeError(f"blockwise.block_size: expected an integer >= 1, got {block_size!r}")
        self.block_size = block_size
        self.init_std = init_std
        self.z: nn.Parameter | None = None

    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        self.z = nn.Parameter(torch.randn(2 * self.block_size, d_model) * self.init_std)

    def forward(self, decoder, encoder_states, encoder_mask, shape, output_attentions=False,
                checkpoint=False) -> GeneratedStates:
        num_tasks = encoder_states.shape[0]
        num_layers = max(shape.num_encoder_layers, shape.num_decoder_layers)
        steps = math.ceil(num_layers / self.block_size)
        step_input = decoder.dropout(self.z.to(encoder_states.dtype).expand(num_tasks, -1, -1))  # T x 2b x d_h
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        outputs: list[torch.Tensor] = []
        attentions = None
        for _ in range(steps):
            h, attentions = run_decoder(decoder, step_input, encoder_states, encoder_mask, cache=cache,
                                        output_attentions=output_attentions, checkpoint=checkpoint)
            outputs.append(h)
            step_input = h
        states = torch.cat(outputs, dim=1)[:, : 2 * num_layers]  # T x 2L x d_h
        rows = {
            "encoder": [[2 * layer] for layer in range(shape.num_encoder_layers)],
            "decoder": [[2 * layer + 1] for layer in range(shape.num_decoder_layers)],
        }
        return GeneratedStates(states, rows, attentions if output_attentions else None)
