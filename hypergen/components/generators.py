"""Generators: from the encoded demos to hidden states laid out per main-model layer.

Both are written against the backbone contract (:mod:`hypergen.models.backbones.base`): ``backbone.decode`` is
one pass of the hypernetwork decoder H_dec (the first k layers of the main model) attending to the encoded demos.
The token layout follows the main model's groups of layers (``shape.groups``: T5 "encoder", "decoder"; a causal
LM "layers"), G groups in all:

* ``non_autoregressive`` (HyperTuning): h = H_dec(z) for a learnable z of G*p tokens, one bi-directional pass.
  Rows [g*p, (g+1)*p) feed every layer of group g.
* ``autoregressive`` (HART, eq. in section 3.1): h_1 = H_dec(z), h_l = H_dec(h_{l-1}) for l = 2..L, with a
  learnable z of G tokens; step l's token g feeds layer l of group g (T5: token 0 encoder layer l, token 1
  decoder layer l). Steps attend to every earlier step through a KV cache, so the cost grows linearly in L, and
  gradients flow through the whole chain.
* ``learned_states`` (no conditioning): p learnable rows per layer of every group, the same for every task, and no
  pass of any network (``reads_demos = False``). With the projector's heads as the reparameterization, this is
  Prefix-Tuning (or LoRA) trained over all training tasks: the paper's "PEFT on FT-Few-Shot" rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.backbones.base import additive_mask
from ..models.few_rows import deferred_weight_gradients
from ..registry import registry
from .base import GeneratedStates, Generator, MainModelShape

__all__ = ["AutoregressiveGenerator", "LearnedRowsGenerator", "LearnedStatesGenerator", "NonAutoregressiveGenerator",
           "additive_mask"]


class LearnedRowsGenerator(Generator):
    """The skeleton both non-autoregressive generators share: a learnable z of ``z_tokens(shape)`` * p rows of
    width d_h (``prefix_rows`` = p, drawn from N(0, init_std^2)), p of them feeding each layer."""

    autoregressive = False

    def __init__(self, init_std: float = 1.0) -> None:
        super().__init__()
        self.init_std = init_std
        self.z: nn.Parameter | None = None
        self.p = 0  # set by build

    @property
    def rows_per_layer(self) -> int:
        """p rows feed each layer (0 until built)."""
        return self.p

    def z_tokens(self, shape: MainModelShape) -> int:
        """How many blocks of p rows z holds."""
        raise NotImplementedError

    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        self.p = max(prefix_rows, 1)
        self.z = nn.Parameter(torch.randn(self.z_tokens(shape) * self.p, d_model) * self.init_std)


@registry.generators.register("non_autoregressive.v1")
class NonAutoregressiveGenerator(LearnedRowsGenerator):
    """HyperTuning: z is G*p learnable tokens (``prefix_rows`` = p, G groups), decoded in one bi-directional pass.

    Output: states T x G*p x d_h; rows [g*p, (g+1)*p) feed every layer of group g (T5: [:p] every encoder layer,
    [p:] every decoder layer; a causal LM: all p rows every layer).
    """

    def z_tokens(self, shape: MainModelShape) -> int:
        return len(shape.groups)  # one block per group: the same p rows feed every layer of a group

    def forward(self, backbone, context, shape, output_attentions=False, checkpoint=False) -> GeneratedStates:
        num_tasks, p = context.states.shape[0], self.p
        z = backbone.input_dropout(self.z.to(context.states.dtype).expand(num_tasks, -1, -1))  # T x G*p x d_h
        states, attentions = backbone.decode(z, context, output_attentions=output_attentions, checkpoint=checkpoint)
        rows = {name: [list(range(g * p, (g + 1) * p))] * count for g, (name, count) in enumerate(shape.groups)}
        return GeneratedStates(states, rows, attentions)


@registry.generators.register("autoregressive.v1")
class AutoregressiveGenerator(Generator):
    """HART: z is G learnable tokens (one per group of main-model layers); L = the largest group's layer count
    decoding steps, step l fed step l-1's output.

    Output: states T x G*L x d_h where row G*l + g is h_l's token g, feeding layer l of group g (T5: rows 2l and
    2l+1 feed encoder layer l and decoder layer l; a causal LM: row l feeds layer l). ``reverse=True`` generates
    the layers in reverse order (step 1 produces the last layer's states). ``use_cache=False`` recomputes the whole
    prefix of steps at each step with a block-causal mask: the same result, quadratic cost; kept as the reference
    the cached path is tested against.
    """

    autoregressive = True
    rows_per_layer = 1  # row G*l + g feeds layer l of group g

    def __init__(self, init_std: float = 1.0, reverse: bool = False, use_cache: bool = True) -> None:
        super().__init__()
        self.init_std = init_std
        self.reverse = reverse
        self.use_cache = use_cache
        self.z: nn.Parameter | None = None

    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        self.z = nn.Parameter(torch.randn(len(shape.groups), d_model) * self.init_std)

    def forward(self, backbone, context, shape, output_attentions=False, checkpoint=False) -> GeneratedStates:
        num_tasks, steps, width = context.states.shape[0], shape.depth, len(shape.groups)
        # z is dropped out once, here; each later step's input is the previous step's output h_{l-1} exactly as
        # the projector sees it (already dropped out once, by the decoder's output dropout)
        step_input = backbone.input_dropout(self.z.to(context.states.dtype).expand(num_tasks, -1, -1))  # T x G x d_h
        outputs: list[torch.Tensor] = []
        if self.use_cache:
            cache = backbone.new_cache(context)
            # each decoder weight's gradient: one product over the L steps, not L (the cached steps are never
            # recomputed in the backward pass: backbones checkpoint only uncached passes)
            with deferred_weight_gradients(*backbone.modules.values()):
                for _ in range(steps):
                    # the G tokens of step l see each other and all earlier steps (held in the cache): no mask
                    h, attentions = backbone.decode(step_input, context, cache=cache,
                                                    output_attentions=output_attentions, checkpoint=checkpoint)
                    outputs.append(h)
                    step_input = h
        else:
            inputs = [step_input]
            for step in range(steps):
                sequence = torch.cat(inputs, dim=1)  # T x G(step+1) x d_h
                h, attentions = backbone.decode(sequence, context,
                                                self_mask=self.block_causal_mask(step + 1, sequence.dtype, width),
                                                output_attentions=output_attentions, checkpoint=checkpoint)
                outputs.append(h[:, -width:])
                inputs.append(h[:, -width:])
        states = torch.cat(outputs, dim=1)  # T x G*L x d_h
        order = list(range(steps))[::-1] if self.reverse else list(range(steps))
        rows = {name: [[width * order[layer] + g] for layer in range(count)]
                for g, (name, count) in enumerate(shape.groups)}
        return GeneratedStates(states, rows, attentions if output_attentions else None)

    @staticmethod
    def block_causal_mask(steps: int, dtype: torch.dtype, tokens_per_step: int = 2) -> torch.Tensor:
        """1 x 1 x ns x ns additive mask (n = ``tokens_per_step``): token i sees token j iff step(j) <= step(i)."""
        step_of = torch.arange(tokens_per_step * steps) // tokens_per_step
        return additive_mask(step_of[None, :] <= step_of[:, None], dtype)[None, None]


@registry.generators.register("learned_states.v1")
class LearnedStatesGenerator(LearnedRowsGenerator):
    """No conditioning: z is p learnable rows for each layer of each group, expanded over the T tasks unchanged.

    Output: states T x (sum of the groups' layer counts) * p x d_h, every task the same; group g's layer l reads
    rows [(o_g + l) * p, (o_g + l + 1) * p), o_g being the layers of the groups before g. The backbone and the
    context are not used (``reads_demos = False``: the hypernetwork gives this generator a backbone with no layers).
    """

    reads_demos = False

    def z_tokens(self, shape: MainModelShape) -> int:
        return sum(count for _, count in shape.groups)  # one block per layer: each layer reads its own p rows

    def forward(self, backbone, context, shape, output_attentions=False, checkpoint=False) -> GeneratedStates:
        num_tasks, p = context.states.shape[0], self.p
        states = self.z.to(context.states.dtype).expand(num_tasks, -1, -1)  # T x (sum L_g) p x d_h
        rows, offset = {}, 0
        for name, count in shape.groups:
            rows[name] = [list(range((offset + layer) * p, (offset + layer + 1) * p)) for layer in range(count)]
            offset += count
        return GeneratedStates(states, rows)
