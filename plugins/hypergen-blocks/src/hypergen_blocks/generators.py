"""``blockwise.v1``: HART's autoregressive generator, one block of main-model layers per decoding step.

With b = ``block_size`` and G groups of main-model layers (T5: encoder, decoder; a causal LM: layers), z is G*b
learnable tokens and step s (s = 0 .. ceil(L/b) - 1) decodes G*b tokens fed the previous step's G*b output tokens
(z at the first step); token G*j + g of step s feeds layer l = s*b + j of group g (T5: token 2j encoder layer l,
token 2j+1 decoder layer l). The tokens of a block see each other (bi-directionally) and every earlier step
through the KV cache, exactly as in :class:`hypergen.components.generators.AutoregressiveGenerator`, which is the
case b = 1. Larger blocks mean fewer sequential steps (L/b) at the price of less step-to-step conditioning.

Output: states T x G*L x d_h, row G*l + g feeding layer l of group g (when L is not a multiple of b, the surplus
tokens of the last block are dropped). Written against the backbone contract only, so it runs on T5 and causal LMs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hypergen.components.base import GeneratedStates, Generator, MainModelShape
from hypergen.errors import RecipeError


class BlockwiseGenerator(Generator):
    """Block-wise autoregressive generation: ``block_size`` main-model layers per decoding step."""

    autoregressive = True
    rows_per_layer = 1  # token G*j + g of step s feeds layer s*b + j of group g

    def __init__(self, block_size: int = 2, init_std: float = 1.0) -> None:
        super().__init__()
        if not isinstance(block_size, int) or block_size < 1:
            raise RecipeError(f"blockwise.block_size: expected an integer >= 1, got {block_size!r}")
        self.block_size = block_size
        self.init_std = init_std
        self.z: nn.Parameter | None = None

    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        self.z = nn.Parameter(torch.randn(len(shape.groups) * self.block_size, d_model) * self.init_std)

    def forward(self, backbone, context, shape, output_attentions=False, checkpoint=False) -> GeneratedStates:
        num_tasks, width = context.states.shape[0], len(shape.groups)
        steps = math.ceil(shape.depth / self.block_size)
        step_input = backbone.input_dropout(self.z.to(context.states.dtype).expand(num_tasks, -1, -1))  # T x G*b x d_h
        cache = backbone.new_cache(context)
        outputs: list[torch.Tensor] = []
        attentions = None
        for _ in range(steps):
            h, attentions = backbone.decode(step_input, context, cache=cache, output_attentions=output_attentions,
                                            checkpoint=checkpoint)
            outputs.append(h)
            step_input = h
        states = torch.cat(outputs, dim=1)[:, : width * shape.depth]  # T x G*L x d_h
        rows = {name: [[width * layer + g] for layer in range(count)] for g, (name, count) in enumerate(shape.groups)}
        return GeneratedStates(states, rows, attentions if output_attentions else None)
