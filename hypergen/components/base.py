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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HypergenError
from ..errors import RecipeError
from ..models.backbones.base import (  # noqa: F401 - part of the components' contract, re-exported
    TEMPORARY_ATTRIBUTE_PREFIX, Backbone, Context, MainModelShape, expand_to_batch)



@dataclass
class GeneratedStates:
    """What a generator produced.

    ``states``: T x S x d_h, one sequence of S hidden states per task.
    ``rows``: for each group of main-model layers (``MainModelShape.groups``: T5 "encoder" and "decoder", a causal
    LM "layers"), a list with one entry per layer of that group, each the list of row indices of ``states`` that
    feed that layer. For HART on T5, encoder layer l reads row 2l and decoder layer l row 2l+1; for HyperTuning on
    T5, every encoder layer reads rows [0, p) and every decoder layer rows [p, 2p).
    ``attentions``: optional T x heads x S x S self-attention of the generator's last layer (for analysis plots).
    """

    states: torch.Tensor
    rows: dict[str, list[list[int]]]
    attentions: torch.Tensor | None = None


@dataclass(frozen=True)
class SlotGroup:
    """A group of parameter slots a PEFT target needs: one ``rows x width`` matrix per layer, per example.

    ``name`` e.g. "encoder.key"; ``source`` is the group of main-model layers whose generated states feed it
    ("encoder" or "decoder" of a T5, "layers" of a causal LM); ``num_layers`` is how many layers carry the slot.
    ``zero_at_init``: the projector must generate this group as exactly zero before any training (LoRA's B half, as
    peft starts a new LoRA), so that the adapted main model starts as the frozen model. ``fan_in_lr``: the group
    holds weights that should move about ``lr`` a step, as a peft adapter's do (LoRA's A and B), so the projector's
    output layer for it trains at lr / fan_in by default (see :mod:`hypergen.components.projectors`).
    """

    name: str
    source: str
    num_layers: int
    rows: int
    width: int
    zero_at_init: bool = False
    fan_in_lr: bool = False


class Generator(nn.Module, abc.ABC):
    """Turns the encoded demos into a sequence of hidden states, laid out per main-model layer.

    Owns its learnable input z. It runs the hypernetwork's layers only through the ``backbone`` contract
    (:class:`hypergen.models.backbones.base.Backbone`: ``decode``, ``new_cache``), so one generator serves T5 and
    causal LMs; the backbone is set by the hypernetwork, not the recipe.

    The contract: besides ``build`` and ``forward``, every generator declares two properties (a class attribute
    is enough). A subclass that leaves one out cannot be instantiated: the error names it and what it lacks.

    * ``rows_per_layer``: how many rows of ``states`` feed one main-model layer of one group (side), i.e. the
      length of every list in ``GeneratedStates.rows[side]``: 1 for HART, p for HyperTuning. Read once ``build``
      has run (it may depend on ``prefix_rows``); the projector sizes its heads with it.
    * ``autoregressive``: True when the states are decoded step by step, each step fed the previous step's
      output (HART), False for a single pass (HyperTuning). Plots and reports read it.

    ``reads_demos`` (default True) may be set False by a generator whose states do not depend on the demos
    (``learned_states``: plain multi-task Prefix-Tuning / LoRA): the hypernetwork then builds no copy of the main
    model's layers (:class:`hypergen.models.backbones.demo_free.DemoFreeBackbone`), and its context holds no states.
    """

    reads_demos: bool = True

    def __new__(cls, *args, **kwargs):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise TypeError(f"generator {cls.__qualname__} does not declare {', '.join(missing)} "
                            "(see hypergen.components.base.Generator)")
        return super().__new__(cls)

    @property
    @abc.abstractmethod
    def rows_per_layer(self) -> int:
        """State rows feeding one main-model layer of one side (1 for HART, p for HyperTuning)."""

    @property
    @abc.abstractmethod
    def autoregressive(self) -> bool:
        """Whether the states are decoded step by step, each step fed the previous one's output."""

    @abc.abstractmethod
    def forward(self, backbone: Backbone, context: Context, shape: MainModelShape, output_attentions: bool = False,
                checkpoint: bool = False) -> GeneratedStates:
        """``context``: ``backbone.encode`` of T tasks' demos (``context.states``: T x n_d x d_h); ``shape``: the
        main model's groups of layers to lay the states out for (``backbone.shape``, or fewer layers);
        ``checkpoint``: pass it on to ``backbone.decode`` (recompute activations in the backward pass)."""

    @abc.abstractmethod
    def build(self, d_model: int, shape: MainModelShape, prefix_rows: int) -> None:
        """Create the learnable input z once the widths are known.

        ``d_model``: the hypernetwork width d_h. ``prefix_rows``: the largest ``rows`` among the PEFT target's
        slot groups (``SlotGroup.rows``: the prefix length p for the prefix target, the rank r for LoRA; 0 for a
        zero-length prefix; 1 when the target declares no slots). HyperTuning takes it as its p (2p tokens in z);
        a generator whose rows_per_layer is fixed may ignore it (the projector expands 1 row to ``rows``).
        """

    def check_contract(self) -> None:
        """Once built: ``rows_per_layer`` an integer >= 1 and ``autoregressive`` a bool, else a RecipeError naming
        the generator."""
        name = type(self).__qualname__
        rows, autoregressive = self.rows_per_layer, self.autoregressive
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise RecipeError(f"hypernetwork.generator: {name}.rows_per_layer must be an integer >= 1 once built, "
                              f"got {rows!r}")
        if not isinstance(autoregressive, bool):
            raise RecipeError(f"hypernetwork.generator: {name}.autoregressive must be True or False, "
                              f"got {autoregressive!r}")
        if not isinstance(self.reads_demos, bool):
            raise RecipeError(f"hypernetwork.generator: {name}.reads_demos must be True or False, "
                              f"got {self.reads_demos!r}")


class Projector(nn.Module, abc.ABC):
    """Maps generated states to the parameter slots a PEFT target declared."""

    @abc.abstractmethod
    def build(self, d_model: int, groups: list[SlotGroup], rows_per_layer: int) -> None:
        """Create the heads; ``rows_per_layer`` is how many state rows feed one layer (1 for HART, p for HT).
        A group with ``zero_at_init`` must come out as exactly zero until the heads are trained (whatever the
        states), so that a fresh hypernetwork leaves the frozen main model's outputs unchanged."""

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


ADAPTER_CONFIG = "adapter_config.json"  # the config file of every adapter folder (see PEFTTarget.export)


class PEFTTarget(abc.ABC):
    """Where generated parameters go in the frozen main model (prefixes, LoRA, ...).

    A target that can be saved as an adapter folder (``hypergen adapt``) names its format in ``adapter_format``
    and implements :meth:`export` and :meth:`load`, as each peft tuner owns its config and save format;
    :mod:`hypergen.adapters` writes the folder atomically, stores the target's registered name beside its files
    and dispatches on that name when loading. The defaults refuse with a one-line error.
    """

    adapter_format: str | None = None  # e.g. "lora" (peft's LoRA folder) or "prefix"; None: cannot be exported

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

    def export(self, folder: Path, params: dict[str, torch.Tensor], main_model: nn.Module,
               base_model_name_or_path: str | None, fusion_in_decoder: bool) -> dict[str, Any]:
        """Write one task's ``params`` ({group name: num_layers x rows x width}) as this target's weight files in
        ``folder`` and return its adapter config (JSON-serialisable, with ``base_model_name_or_path``), which
        :mod:`hypergen.adapters` stores as ``adapter_config.json``."""
        raise HypergenError(f"peft target {type(self).__name__} has no adapter format (it does not implement "
                            "export/load), so it cannot be written as an adapter folder")

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any],
             main_model: nn.Module) -> tuple["PEFTTarget", dict[str, torch.Tensor]]:
        """Rebuild the target and its parameters ({group name: 1 x num_layers x rows x width}) from an adapter
        folder :meth:`export` wrote (``config``: its parsed ``adapter_config.json``), checking that they fit
        ``main_model``; a mismatch raises a one-line :class:`HypergenError` naming the file."""
        raise HypergenError(f"{folder}: peft target {cls.__name__} has no adapter format (it does not implement "
                            "export/load), so it cannot load an adapter folder")


@dataclass
class Components:
    """The assembled components of a recipe."""

    generator: Generator
    projector: Projector
    target: PEFTTarget
    regularizers: list[Regularizer] = field(default_factory=list)
