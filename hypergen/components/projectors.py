"""Projectors: per-layer MLP heads that turn generated states into a PEFT target's parameter slots.

``layerwise_mlp`` follows appendix 6.1.2 of the HART paper. For every slot group g (e.g. encoder keys) and layer l:

    phi_g^l = Linear2_g^l( tanh( reshape( Linear1_g( LayerNorm_g^l(h_l) ) ) ) )

Linear1_g is shared by all layers of the group; LayerNorm and Linear2 are per layer. With r state rows feeding a
layer and a slot of ``rows`` x ``width``, Linear1 maps d_h -> (rows / r) * d_hidden, so that
HART (r = 1) gets d_h -> p*d_h then a reshape to p x d_h, and HyperTuning (r = p) gets d_h -> d_h on each row.

Starting and moving like a peft adapter. A slot group with ``zero_at_init`` (LoRA's B) has Linear2 = 0, so a fresh
hypernetwork leaves the frozen model unchanged. And Adam moves every weight by about ``lr`` a step, so each output
of Linear2 (a sum of ``hidden`` terms tanh(.) * w) moves by up to ``lr * hidden * E|tanh|``: on SmolLM2 (hidden
576) the generated LoRA grew by 7% of ||W|| a step at lr 3e-4 and the loss rose above the frozen model's by step 3
(benchmarks/results/real_model.md). ``output_lr_scale`` scales Linear2's learning rate: ``"fan_in"`` (1 / hidden, the muP
rule for an Adam-trained output layer) makes a generated weight move about ``lr`` a step, as a peft LoRA weight
does; the default ``"auto"`` applies it to the groups that ask for it (``SlotGroup.fan_in_lr``: LoRA's A and B) and
keeps the full rate for the others (prefixes, whose keys and values must grow to the size of real ones).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import RecipeError
from ..models.few_rows import FewRowsLinear
from ..training.optim import LR_SCALE
from ..registry import registry
from .base import GeneratedStates, Projector, SlotGroup


class LayerwiseHeads(nn.Module):
    """The heads of one slot group: per-layer LayerNorm, shared Linear1, tanh, per-layer Linear2.

    Input T x L x r x d_h; output T x L x rows x width.
    """

    def __init__(self, group: SlotGroup, d_model: int, hidden: int, rows_in: int, eps: float = 1e-6,
                 output_lr_scale: float = 1.0) -> None:
        super().__init__()
        self.group = group
        self.rows_in = min(rows_in, group.rows) if group.rows else rows_in
        if group.rows and group.rows % self.rows_in:
            raise RecipeError(f"projector: slot group {group.name} needs {group.rows} rows, which {self.rows_in}"
                              " generated rows per layer cannot divide")
        self.expansion = group.rows // self.rows_in if group.rows else 0
        self.hidden = hidden
        self.eps = eps
        num_layers = group.num_layers
        self.norm_weight = nn.Parameter(torch.ones(num_layers, d_model))  # LayerNorm_g^l
        self.norm_bias = nn.Parameter(torch.zeros(num_layers, d_model))
        # Linear1_g, shared across layers (HART feeds it T x L rows: a few, for which FewRowsLinear is faster on a CPU)
        self.first = FewRowsLinear(d_model, self.expansion * hidden)
        self.second_weight = nn.Parameter(torch.empty(num_layers, hidden, group.width))  # Linear2_g^l
        self.second_bias = nn.Parameter(torch.zeros(num_layers, group.width))
        setattr(self.second_weight, LR_SCALE, output_lr_scale)  # read by training.optim.make_optimizer
        if group.zero_at_init:  # e.g. LoRA's B: the adapted model starts as the frozen model (peft's convention)
            nn.init.zeros_(self.second_weight)
        else:
            nn.init.uniform_(self.second_weight, -hidden ** -0.5, hidden ** -0.5)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        states = states[:, :, : self.rows_in]  # T x L x r x d_h
        normed = nn.functional.layer_norm(states, states.shape[-1:], eps=self.eps)
        normed = normed * self.norm_weight[None, :, None] + self.norm_bias[None, :, None]
        t, num_layers, r, _ = normed.shape
        hidden = torch.tanh(self.first(normed).reshape(t, num_layers, r * self.expansion, self.hidden))
        return torch.einsum("tlph,lhw->tlpw", hidden, self.second_weight) + self.second_bias[None, :, None]


@registry.projectors.register("layerwise_mlp.v1")
class LayerwiseMLPProjector(Projector):
    """One :class:`LayerwiseHeads` per slot group; ``hidden`` defaults to the hypernetwork width d_h;
    ``output_lr_scale``: Linear2's learning rate relative to the recipe's: ``"auto"`` (the default: 1 / hidden for
    groups with ``fan_in_lr``, else 1), ``"fan_in"`` (1 / hidden for every group) or a positive number."""

    def __init__(self, hidden: int | None = None, output_lr_scale: float | str = "auto") -> None:
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
            raise RecipeError(f"hidden: expected a positive integer (or null for the hypernetwork width), "
                              f"got {hidden!r}")
        if output_lr_scale not in ("auto", "fan_in") and (isinstance(output_lr_scale, bool)
                                            or not isinstance(output_lr_scale, (int, float)) or output_lr_scale <= 0):
            raise RecipeError(f"output_lr_scale: expected \"auto\", \"fan_in\" or a positive number, got "
                              f"{output_lr_scale!r}")
        super().__init__()
        self.hidden = hidden
        self.output_lr_scale = output_lr_scale
        self.heads = nn.ModuleDict()
        self._indices: dict[tuple, torch.Tensor] = {}  # row layouts already on a device: no copy per step

    def build(self, d_model: int, groups: list[SlotGroup], rows_per_layer: int) -> None:
        for group in groups:
            key = group.name.replace(".", "_")
            hidden = self.hidden or d_model
            if self.output_lr_scale in ("auto", "fan_in"):
                fan_in = self.output_lr_scale == "fan_in" or group.fan_in_lr
                scale = 1.0 / hidden if fan_in else 1.0
            else:
                scale = float(self.output_lr_scale)
            self.heads[key] = LayerwiseHeads(group, d_model, hidden, rows_per_layer, output_lr_scale=scale)

    def forward(self, generated: GeneratedStates) -> dict[str, torch.Tensor]:
        out = {}
        for head in self.heads.values():
            group = head.group
            index = self._row_index(generated.rows[group.source][: group.num_layers], generated.states.device)
            states = generated.states[:, index]  # T x L x r x d_h
            out[group.name] = head(states)
        return out

    def _row_index(self, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        """The L x r index of the state rows each layer reads, made on ``device`` once per layout (a host-to-device
        copy every step would wait for the device on a GPU)."""
        key = (tuple(map(tuple, rows)), str(device))
        if key not in self._indices:
            self._indices[key] = torch.tensor(rows, device=device)
        return self._indices[key]
