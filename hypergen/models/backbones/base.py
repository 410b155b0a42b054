"""The backbone contract: what a generator may ask of the hypernetwork's layers, implemented once per model family.

The generators never see a T5 or a Llama, only these operations (docs/architecture.md, "Backbones")::

    context = backbone.encode(demo_ids, demo_mask)                  what the generated states attend to
    cache = backbone.new_cache(context)                             for step-by-step decoding (HART)
    states, attentions = backbone.decode(inputs, context, cache)    one pass of the hypernetwork decoder

and ``backbone.shape``: the main model's groups of layers (T5: "encoder" and "decoder"; a causal LM: "layers"), in
the order a generator lays out its tokens (HART: one token per group per step; HyperTuning: p tokens per group).
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

TEMPORARY_ATTRIBUTE_PREFIX = "_hypergen_"
"""The prefix of the name of every attribute a PEFT target sets on the main model's modules (site tags, hook
handles, and the per-example parameters held while ``applied``), e.g. ``f"{TEMPORARY_ATTRIBUTE_PREFIX}lora"``.
Gradient checkpointing of the frozen main model (hypergen/training/activation_recompute.py) snapshots exactly the
attributes with this prefix and restores them when the backward pass recomputes a block, so a target whose
temporaries are named otherwise gets wrong gradients under ``training.gradient_checkpointing.main_model``."""


def expand_to_batch(batch: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-example tensors (P rows) expanded to ``batch`` = P * k rows as ``generate()`` expands its inputs for
    beam search (``repeat_interleave``: rows i*k .. i*k+k-1 belong to example i)."""
    rows = tensors[0].shape[0]
    if batch == rows:
        return tensors
    if batch % rows:
        raise ValueError(f"batch {batch} is not a multiple of the {rows} rows of generated parameters")
    return tuple(t.repeat_interleave(batch // rows, dim=0) for t in tensors)


@dataclass(frozen=True)
class MainModelShape:
    """The main model's groups of layers: ``groups`` is ((group name, layer count), ...) in token-layout order."""

    groups: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, **layers: int) -> "MainModelShape":
        """``MainModelShape.of(encoder=3, decoder=2)``: the groups in keyword order."""
        return cls(tuple(layers.items()))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.groups]

    @property
    def depth(self) -> int:
        """The largest layer count of a group: HART's number of decoding steps."""
        return max(count for _, count in self.groups)

    def layers(self, source: str) -> int:
        """The layer count of group ``source``."""
        return dict(self.groups)[source]


@dataclass
class Context:
    """What :meth:`Backbone.encode` made of T tasks' demos.

    ``states``: T x n_d x d_h, the demos' final hidden states (T5's cross-attention memory; fusion-in-decoder);
    ``mask``: T x n_d (1 = token, 0 = padding); ``past``: backbone-specific (a causal LM's per-layer demo keys and
    values, each T x kv_heads x n_d x d_head), None for T5. ``rows``: None, or B task-row indices when the
    context is read by B examples (fusion-in-decoder: example b reads row ``rows[b]``; the rows are kept per task
    so that what depends only on the demos, such as their cross-attention keys and values, is computed once per
    task)."""

    states: torch.Tensor
    mask: torch.Tensor
    past: Any = None
    rows: torch.Tensor | None = None
    gate: torch.Tensor | None = None  # a causal LM's fusion gate per main-model layer (Family.fused)

    def per_example(self) -> "Context":
        """The context with one row per example (``rows`` applied; itself when ``rows`` is None)."""
        if self.rows is None:
            return self
        return Context(self.states.index_select(0, self.rows), self.mask.index_select(0, self.rows), self.past,
                       gate=self.gate)


class Backbone(abc.ABC):
    """The hypernetwork's copy of (part of) the main model, behind the contract generators are written against.

    ``modules``: {attribute name: nn.Module} that the hypernetwork registers as its own trainable children (their
    names are the hypernetwork's state-dict prefixes). ``d_model``: the hidden width d_h; ``num_layers``: k, the
    main-model layers ``decode`` runs; ``supports_fusion``: whether the main model can read the encoded demos
    beside its input (fusion-in-decoder: T5's cross-attention; a causal LM has none).
    """

    shape: MainModelShape
    d_model: int
    num_layers: int
    supports_fusion: bool
    modules: dict[str, nn.Module]

    @abc.abstractmethod
    def encode(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor) -> Context:
        """``demo_ids``, ``demo_mask``: T x n_d."""

    @abc.abstractmethod
    def new_cache(self, context: Context) -> Any:
        """An empty cache of generated steps (holding whatever of ``context`` every step attends to)."""

    def input_dropout(self, inputs: torch.Tensor) -> torch.Tensor:
        """Dropout for what a generator feeds for the first time (its learnable z), as the model drops out its
        input embeddings once; states fed back from an earlier step are not dropped out again. Default: none."""
        return inputs

    def context_keys(self, context: Context) -> int:
        """How many leading key columns of :meth:`decode`'s attention weights are the demos (a causal LM attends to
        them in the same softmax as to the generated tokens; T5 attends to them in a separate cross-attention: 0)."""
        return 0

    @abc.abstractmethod
    def decode(self, inputs: torch.Tensor, context: Context, cache: Any = None, self_mask: torch.Tensor | None = None,
               output_attentions: bool = False, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass over ``inputs`` (T x n x d_h, used as embeddings) after the demos and the steps in ``cache``
        (written in place when given). ``self_mask``: additive T (or 1) x 1 x n x n_generated mask over the generated
        tokens (those in the cache, then ``inputs``); None: all visible. The demos are always visible (but their
        padding). ``checkpoint``: recompute activations in backward, only without a ``cache``. Returns the final-
        normed states T x n x d_h and, if asked, the last layer's attention weights (T x heads x n x keys: the
        :meth:`context_keys` demo columns, then the generated tokens in the cache, then ``inputs``)."""


@dataclass(frozen=True)
class LinearSite:
    """One projection of the main model a LoRA can adapt: ``group`` names its slot groups' stem (T5
    "encoder.self.q", a causal LM "layers.q_proj"), ``source`` its group of layers, ``layer`` its layer index,
    ``path_template`` its dotted module name with ``{layer}`` for the layer index. What a target may ask for:
    ``module`` (peft's name of it, e.g. "q_proj", "c_attn"), ``roles`` (what it computes: "attn.q", "attn.k",
    "attn.v", "attn.o", "mlp.in", "mlp.out"; a fused projection has several), ``attention`` ("self", "cross"; None
    for an MLP). ``fan_in_fan_out``: a Conv1D whose weight is d_in x d_out (GPT-2), not an nn.Linear."""

    group: str
    source: str
    layer: int
    path_template: str
    module: str = ""
    roles: tuple[str, ...] = ()
    attention: str | None = "self"
    fan_in_fan_out: bool = False

    @property
    def fused(self) -> bool:
        """Whether this one projection computes several roles (GPT-2's ``c_attn``: q, k and v)."""
        return len(self.roles) > 1

    @property
    def path(self) -> str:
        return self.path_template.format(layer=self.layer)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``keep`` (bool, ... x q x k, True = visible) -> float mask with 0 where visible and the dtype's min elsewhere."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def copy_config_as_eager(module: nn.Module) -> None:
    """Give ``module`` (a copied stack) its own config with eager attention, shared by all its submodules."""
    config = copy.deepcopy(module.config)
    config._attn_implementation = "eager"
    for sub in module.modules():
        if hasattr(sub, "config"):
            sub.config = config
