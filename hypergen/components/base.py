"""The four abstract component interfaces and the small data types that pass between them.

Data flow of one step (B examples, T tasks in the batch, d_h the hypernetwork width)::

    e = Enc_hyper(demos)                       T x n_d x d_h
    states = generator(e, mask)                GeneratedStates: T x S x d_h, plus which rows feed which layer
    params = projector(states)                 {slot group name: T x L_g x rows_g x width_g}
    with target.applied(main, params[rows]):   the frozen main model sees each example's task parameters
        loss = CE(main(x), y) + sum_i alpha_i * regularizer_i(states)
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class GeneratedStates:
    """What a generator produced.

    ``states``: T x S x d_h, one sequence of S hidden states per task.
    ``rows``: for each source ("encoder" or "decoder" side of the main model), a list with one entry per main-model
    layer of that side, each the list of row indices of ``states`` that feed that layer. For HART, layer l of the
    encoder reads row 2l and layer l of the decoder reads row 2l+1; for HyperTuning, every encoder layer reads rows
    [0, p) and every decoder layer rows [p, 2p).
    ``attentions``: optional T x heads x S x S self-attention of the generator's last layer (for analysis plots).
    """

    states: torch.Tensor
    rows: dict[str, list[list[int]]]
    attentions: torch.Tensor | None = None

    def for_layer(self, source: str, layer: int) -> torch.Tensor:
        """The states feeding ``layer`` of ``source``: T x r x d_h."""
        return self.states[:, self.rows[source][layer], :]


@dataclass(frozen=True)
class SlotGroup:
    """A group of parameter slots a PEFT target needs: one ``rows x width`` matrix per layer, per example.

    ``name`` e.g. "encoder.key"; ``source`` is the side of the main model whose generated states feed it
    ("encoder" or "decoder"); ``num_layers`` is how many layers carry the slot.
    """

    name: str
    source: str
    num_layers: int
    rows: int
    width: int


@dataclass(frozen=True)
class MainModelShape:
    """What a generator needs to know of the main model: layer counts of each side."""

    num_encoder_layers: int
    num_decoder_layers: int

    def layers(self, source: str) -> int:
        return self.num_encoder_layers if source == "encoder" else self.num_decoder_layers


class Generator(nn.Module, abc.ABC):
    """Turns the hypernetwork encoder's output into a sequence of hidden states, laid out per main-model layer.

    Owns its learnable input z. ``decoder`` is the hypernetwork's decoder (the first k layers of the main
    model's decoder); it is set by the hypernetwork, not the recipe.
    """

    autoregressive: bool = False

    @abc.abstractmethod
    def forward(self, decoder: nn.Module, encoder_states: torch.Tensor, encoder_mask: torch.Tensor,
                shape: MainModelShape, output_attentions: bool = False) -> GeneratedStates:
        """``encoder_states``: T x n_d x d_h; ``encoder_mask``: T x n_d (1 = token, 0 = padding)."""

    @abc.abstractmethod
    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        """Create the learnable input z once the widths are known."""


class Projector(nn.Module, abc.ABC):
    """Maps generated states to the parameter slots a PEFT target declared."""

    @abc.abstractmethod
    def build(self, d_model: int, groups: list[SlotGroup], rows_per_layer: int) -> None:
        """Create the heads; ``rows_per_layer`` is how many state rows feed one layer (1 for HART, p for HT)."""

    @abc.abstractmethod
    def forward(self, generated: GeneratedStates) -> dict[str, torch.Tensor]:
        """Return {group name: T x num_layers x rows x width}."""


class Regularizer(abc.ABC):
    """A loss on the generated states, weighted by ``alpha``; stateful across iterations and checkpointed."""

    alpha: float = 1.0

    @abc.abstractmethod
    def loss(self, states: torch.Tensor, step: int) -> torch.Tensor:
        """``states``: T x S x d_h of one micro-batch of iteration ``step`` (called once per micro-batch, in
        order). Returns the unweighted scalar loss."""

    def end_step(self, applied: bool) -> None:  # noqa: B027 - stateless default
        """Called by the trainer once per optimizer step, after it: ``applied`` False when the update was skipped
        (non-finite), and then the step's states must leave no trace in what later steps compare against."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027 - stateless default
        pass


class PEFTTarget(abc.ABC):
    """Where generated parameters go in the frozen main model (prefixes, LoRA, ...)."""

    @abc.abstractmethod
    def slot_groups(self, main_model: nn.Module) -> list[SlotGroup]:
        """The parameter slots this target needs for ``main_model``."""

    @abc.abstractmethod
    def prepare(self, main_model: nn.Module) -> None:
        """One-time changes to the main model (hooks, attention function); idempotent."""

    @abc.abstractmethod
    def applied(self, main_model: nn.Module, params: dict[str, torch.Tensor]) -> AbstractContextManager[Any]:
        """Context manager: inside it, row b of every batch the main model sees uses ``params[g][b]``.

        ``params``: {group name: B x num_layers x rows x width}, one entry per example (a batch may mix tasks).
        """

    def describe(self) -> dict[str, Any]:
        return {}


def expand_to_batch(batch: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-example tensors (P rows) expanded to ``batch`` = P * k rows as ``generate()`` expands its inputs for
    beam search (``repeat_interleave``: rows i*k .. i*k+k-1 belong to example i)."""
    rows = tensors[0].shape[0]
    if batch == rows:
        return tensors
    if batch % rows:
        raise ValueError(f"batch {batch} is not a multiple of the {rows} rows of generated parameters")
    return tuple(t.repeat_interleave(batch // rows, dim=0) for t in tensors)


@dataclass
class Components:
    """The assembled components of a recipe."""

    generator: Generator
    projector: Projector
    target: PEFTTarget
    regularizers: list[Regularizer] = field(default_factory=list)
