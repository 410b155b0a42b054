"""The hypernetwork H(d; xi): encoder + first k decoder layers of the main model, a generator and a projector.

    e      = Enc_hyper(d)            T x n_d x d_h       (d: the demos of T tasks)
    states = generator(H_dec, e)     T x S x d_h
    phi    = projector(states)       {group: T x L_g x rows x width}

Initialised from the main model (appendix 6.1.1): the encoder is a copy of the main encoder, the decoder a copy of
its first k layers; z and the MLP heads start random.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import GeneratedStates, Generator, MainModelShape, Projector, SlotGroup


@dataclass
class TaskParameters:
    """The output of one hypernetwork pass over T tasks' demos."""

    params: dict[str, torch.Tensor]   # {group: T x L_g x rows x width}
    encoder_states: torch.Tensor      # T x n_d x d_h (for fusion-in-decoder)
    encoder_mask: torch.Tensor        # T x n_d
    generated: GeneratedStates        # states T x S x d_h

    def select(self, task_index: torch.Tensor) -> "TaskParameters":
        """Expand to one row per example: ``task_index`` (B,) names each example's task row."""
        return TaskParameters(
            {k: v.index_select(0, task_index) for k, v in self.params.items()},
            self.encoder_states.index_select(0, task_index),
            self.encoder_mask.index_select(0, task_index),
            self.generated,
        )

    def detach(self) -> "TaskParameters":
        return TaskParameters({k: v.detach() for k, v in self.params.items()}, self.encoder_states.detach(),
                              self.encoder_mask, self.generated)


def main_model_shape(main_model: nn.Module) -> MainModelShape:
    config = main_model.config
    return MainModelShape(config.num_layers, getattr(config, "num_decoder_layers", None) or config.num_layers)


class HyperNetwork(nn.Module):
    def __init__(self, main_model: nn.Module, generator: Generator, projector: Projector, groups: list[SlotGroup],
                 decoder_layers: int, init_from_main: bool = True) -> None:
        super().__init__()
        self.shape = main_model_shape(main_model)
        if decoder_layers > len(main_model.decoder.block):
            raise ValueError(f"hypernetwork.decoder_layers: {decoder_layers} exceeds the main model's "
                             f"{len(main_model.decoder.block)} decoder layers")
        self.encoder = copy.deepcopy(main_model.encoder)
        self.decoder = copy.deepcopy(main_model.decoder)
        self.decoder.block = nn.ModuleList(list(self.decoder.block)[:decoder_layers])
        self.decoder.embed_tokens = None  # the generator feeds z and states as embeddings
        for stack in (self.encoder, self.decoder):
            stack.config = copy.deepcopy(stack.config)
            stack.config._attn_implementation = "eager"
            for module in stack.modules():
                if hasattr(module, "config") and module is not stack:
                    module.config = stack.config
        if not init_from_main:
            self.encoder.apply(main_model._init_weights)
            self.decoder.apply(main_model._init_weights)
        self.d_model = main_model.config.d_model
        prefix_rows = max(g.rows for g in groups) if groups else 1
        self.generator = generator
        self.generator.build(self.d_model, self.shape, prefix_rows)
        self.generator.check_contract()
        self.projector = projector
        self.projector.build(self.d_model, groups, generator.rows_per_layer)
        self.checkpoint_decoder = False  # recompute the decoder's activations in backward (training switches it)
        self.float()  # trainable weights stay fp32 even when the frozen main model runs in bf16
        for parameter in self.parameters():
            parameter.requires_grad_(True)

    def forward(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor,
                output_attentions: bool = False) -> TaskParameters:
        """``demo_ids``, ``demo_mask``: T x n_d token ids of each task's demos."""
        encoder_states = self.encoder(input_ids=demo_ids, attention_mask=demo_mask).last_hidden_state  # T x n_d x d_h
        generated = self.generator(self.decoder, encoder_states, demo_mask, self.shape,
                                   output_attentions=output_attentions, checkpoint=self.checkpoint_decoder)
        return TaskParameters(self.projector(generated), encoder_states, demo_mask, generated)
