"""The hypernetwork H(d; xi): a backbone copied from the main model, a generator and a projector.

    e      = backbone.encode(d)            T x n_d x d_h       (d: the demos of T tasks)
    states = generator(backbone, e)        T x S x d_h
    phi    = projector(states)             {group: T x L_g x rows x width}

Initialised from the main model (appendix 6.1.1): for T5 the encoder is a copy of the main encoder and the decoder
a copy of its first k layers; for a causal LM a copy of its first k layers and final norm (see
hypergen/models/backbones/); z and the MLP heads start random. A generator that reads no demos
(``learned_states``) gets a backbone with no layers: the hypernetwork is then only z and the heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import GeneratedStates, Generator, Projector, SlotGroup
from ..training.optim import LR_SCALE
from .backbones import make_backbone

# the fusion gates train at lr x this: Adam moves a parameter by about lr a step whatever its gradient, so at lr 3e-4
# a gate starting at 0 would reach tanh(0.012) in 40 steps and fusion would stay shut for a whole CPU-sized run
# (measured: HART with and without fusion gave the same predictions after 3 steps); at 100x it can open in tens
FUSION_GATE_LR_SCALE = 100.0


@dataclass
class TaskParameters:
    """The output of one hypernetwork pass over T tasks' demos."""

    params: dict[str, torch.Tensor]   # {group: T x L_g x rows x width}
    encoder_states: torch.Tensor      # T x n_d x d_h: the encoded demos (for fusion-in-decoder)
    encoder_mask: torch.Tensor        # T x n_d
    generated: GeneratedStates        # states T x S x d_h
    example_rows: torch.Tensor | None = None  # B: after select, each example's task row in encoder_states
    fusion_gate: torch.Tensor | None = None   # L: a causal LM's fusion gate per main-model layer (tanh, 0 at init)

    def select(self, task_index: torch.Tensor) -> "TaskParameters":
        """Expand the parameters to one row per example: ``task_index`` (B,) names each example's task row. The
        encoded demos stay one row per task (``example_rows`` = ``task_index``): the main model computes what
        depends on them alone once per task."""
        return TaskParameters(
            {k: v.index_select(0, task_index) for k, v in self.params.items()},
            self.encoder_states,
            self.encoder_mask,
            self.generated,
            task_index,
            self.fusion_gate,
        )

    def detach(self) -> "TaskParameters":
        return TaskParameters({k: v.detach() for k, v in self.params.items()}, self.encoder_states.detach(),
                              self.encoder_mask, self.generated, self.example_rows,
                              None if self.fusion_gate is None else self.fusion_gate.detach())


class HyperNetwork(nn.Module):
    def __init__(self, main_model: nn.Module, generator: Generator, projector: Projector, groups: list[SlotGroup],
                 decoder_layers: int, init_from_main: bool = True, fusion_gate: bool = False) -> None:
        super().__init__()
        self.backbone = make_backbone(main_model, decoder_layers, init_from_main, generator.reads_demos)
        for name, module in self.backbone.modules.items():  # "encoder", "decoder": the state-dict prefixes
            self.add_module(name, module)
        self.shape = self.backbone.shape
        self.d_model = self.backbone.d_model
        prefix_rows = max(g.rows for g in groups) if groups else 1
        self.generator = generator
        self.generator.build(self.d_model, self.shape, prefix_rows)
        self.generator.check_contract()
        self.projector = projector
        self.projector.build(self.d_model, groups, generator.rows_per_layer)
        # a causal LM's fusion (Family.fused): tanh(g_l) scales what layer l reads from the fused demos; g = 0 at
        # first, so that a fresh hypernetwork starts as the frozen model, as its zero-initialised LoRA B does
        self.fusion_gate = nn.Parameter(torch.zeros(self.shape.depth)) if fusion_gate else None
        if self.fusion_gate is not None:
            setattr(self.fusion_gate, LR_SCALE, FUSION_GATE_LR_SCALE)  # read by training.optim.make_optimizer
        self.checkpoint_decoder = False  # recompute the decoder's activations in backward (training switches it)
        self.float()  # trainable weights stay fp32 even when the frozen main model runs in bf16
        for parameter in self.parameters():
            parameter.requires_grad_(True)

    def forward(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor,
                output_attentions: bool = False) -> TaskParameters:
        """``demo_ids``, ``demo_mask``: T x n_d token ids of each task's demos."""
        context = self.backbone.encode(demo_ids, demo_mask)  # context.states: T x n_d x d_h
        generated = self.generator(self.backbone, context, self.shape, output_attentions=output_attentions,
                                   checkpoint=self.checkpoint_decoder)
        return TaskParameters(self.projector(generated), context.states, context.mask, generated,
                              fusion_gate=self.fusion_gate)
