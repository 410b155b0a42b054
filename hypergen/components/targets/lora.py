"""LoRA on a T5 main model: generated per-example low-rank updates of the attention projections.

For each adapted projection ``W`` (an ``nn.Linear`` of d_in -> d_out: ``q``, ``k``, ``v`` or ``o`` of the
encoder/decoder self-attention or of the decoder cross-attention ``EncDecAttention``) and each example b::

    y_b = W x_b + (alpha / r) * B_b (A_b x_b)        A_b: r x d_in,  B_b: d_out x r

Slot groups, per side, attention and projection, e.g. ``"encoder.self.q.A"`` and ``"encoder.self.q.B"``:
``num_layers`` (that side's layer count) x ``rank`` rows x width. The A group has width d_in; the B group has width
d_out and holds **B transposed** (r x d_out), so both are "r rows" and the generic projector serves them (HART
feeds one state row per layer and the projector's Linear1 expands it to r rows). For T5's q/k/v, d_in = d_model
and d_out = n_heads * d_kv; for ``o`` it is the other way round. peft's ``lora_B.weight`` is d_out x r, the
transpose of the slot (see :mod:`hypergen.adapters`).

Mechanism: :meth:`LoraTarget.prepare` registers a forward hook on each chosen ``nn.Linear``. Outside
:meth:`LoraTarget.applied` the hook returns ``None``, so the model is exactly the stock model. Inside, each Linear
holds its per-example (A, B^T) for the duration of the ``with`` block and the hook adds the low-rank update with
batched einsums (no loop over examples). When the Linear's batch is a multiple of the parameters' batch (``generate``
with beam search runs the decoder on B * beams rows while the encoder ran on B), the parameters are
``repeat_interleave``-d, as in :mod:`.prefix`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from ...registry import registry
from ..base import TEMPORARY_ATTRIBUTE_PREFIX, PEFTTarget, SlotGroup, expand_to_batch

_SITE = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora_site"  # on a hooked Linear: (side, attention, projection, layer index)
_HOOK = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora_hook"  # the hook's handle (prepare is idempotent)
_LORA = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora"  # (A: P x r x d_in, B^T: P x r x d_out, scale), while applied

PROJECTIONS = ("q", "k", "v", "o")
ATTENTIONS = {"self": (0, "SelfAttention"), "cross": (1, "EncDecAttention")}  # layer index in a T5 block, name
SIDES = ("encoder", "decoder")


def _lora_hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Add ``scale * (x A^T) B^T`` per example to the Linear's output; a no-op when no LoRA is applied."""
    lora = getattr(module, _LORA, None)
    if lora is None:
        return None
    a, bt, scale = lora
    x = args[0]
    batch = x.shape[0]
    a, bt = expand_to_batch(batch, a, bt)
    flat = x.reshape(batch, -1, x.shape[-1])  # B x n x d_in
    low = torch.einsum("bnd,brd->bnr", flat, a.to(x.dtype))
    delta = torch.einsum("bnr,bro->bno", low, bt.to(x.dtype)) * scale
    return output + delta.reshape(output.shape).to(output.dtype)


def module_path(side: str, layer: int, attention: str, projection: str) -> str:
    """The dotted name of a projection inside a T5ForConditionalGeneration, e.g. ``encoder.block.0.layer.0.SelfAttention.q``."""
    index, name = ATTENTIONS[attention]
    return f"{side}.block.{layer}.layer.{index}.{name}.{projection}"


@registry.peft_targets.register("lora.v1")
class LoraTarget(PEFTTarget):
    """Per-example LoRA of rank ``rank`` (scale ``alpha / rank``) on the ``targets`` projections of the chosen
    ``attention`` modules ("self" and/or "cross"; cross-attention exists only in the decoder) of each side in
    ``sides``. Slot groups ``"{side}.{attention}.{projection}.A"`` (num_layers x rank x d_in) and ``".B"``
    (num_layers x rank x d_out: B transposed)."""

    def __init__(self, rank: int = 8, alpha: float = 16.0, targets: tuple[str, ...] | list[str] = ("q", "v"),
                 attention: tuple[str, ...] | list[str] = ("self",),
                 sides: tuple[str, ...] | list[str] = ("encoder", "decoder")) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        for name, values, allowed in (("targets", targets, PROJECTIONS), ("attention", attention, tuple(ATTENTIONS)),
                                      ("sides", sides, SIDES)):
            if isinstance(values, str) or not values:
                raise ValueError(f"{name} must be a non-empty list, got {values!r}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"{name}: unknown {unknown}; allowed: {', '.join(allowed)}")
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.targets = tuple(dict.fromkeys(targets))
        self.attention = tuple(dict.fromkeys(attention))
        self.sides = tuple(dict.fromkeys(sides))
        if not self._combos():
            raise ValueError("cross-attention exists only in the decoder; with sides=['encoder'] choose 'self'")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _combos(self) -> list[tuple[str, str]]:
        """(side, attention) pairs that exist: the encoder has no cross-attention."""
        return [(side, att) for side in self.sides for att in self.attention if not (side == "encoder" and att == "cross")]

    def sites(self, main_model: nn.Module) -> Iterator[tuple[str, str, str, int, nn.Linear]]:
        """(side, attention, projection, layer, Linear) for every adapted projection, in slot-group order."""
        for side, att in self._combos():
            stack = getattr(main_model, side, None)
            if stack is None:
                continue
            index, name = ATTENTIONS[att]
            for projection in self.targets:
                for layer, block in enumerate(stack.block):
                    yield side, att, projection, layer, getattr(getattr(block.layer[index], name), projection)

    def slot_groups(self, main_model: nn.Module) -> list[SlotGroup]:
        groups = []
        for side, att in self._combos():
            stack = getattr(main_model, side)
            index, name = ATTENTIONS[att]
            for projection in self.targets:
                linear = getattr(getattr(stack.block[0].layer[index], name), projection)
                prefix = f"{side}.{att}.{projection}"
                groups.append(SlotGroup(f"{prefix}.A", side, len(stack.block), self.rank, linear.in_features))
                groups.append(SlotGroup(f"{prefix}.B", side, len(stack.block), self.rank, linear.out_features))
        return groups

    def prepare(self, main_model: nn.Module) -> None:
        """Hook every chosen projection once (idempotent); the hook is inert outside :meth:`applied`."""
        for side, att, projection, layer, linear in self.sites(main_model):
            if not isinstance(linear, nn.Linear):
                raise RuntimeError(f"{module_path(side, layer, att, projection)} is {type(linear).__name__}, "
                                   "not nn.Linear")
            if getattr(linear, _HOOK, None) is None:
                setattr(linear, _HOOK, linear.register_forward_hook(_lora_hook))
            setattr(linear, _SITE, (side, att, projection, layer))

    @contextmanager
    def applied(self, main_model: nn.Module, params: dict[str, torch.Tensor]) -> Iterator[None]:
        """Inside the block, projection p of attention a, layer l, side s adds ``scale * B (A x)`` per example,
        with ``A = params["s.a.p.A"][:, l]`` (B x r x d_in) and ``B^T = params["s.a.p.B"][:, l]`` (B x r x d_out).

        On exit (also on an exception) the previous state of each Linear is restored.
        """
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for side, att, projection, layer, linear in self.sites(main_model):
                if getattr(linear, _SITE, None) != (side, att, projection, layer):
                    raise RuntimeError("call LoraTarget.prepare(main_model) before applied()")
                prefix = f"{side}.{att}.{projection}"
                saved.append((linear, getattr(linear, _LORA, None)))
                setattr(linear, _LORA, (params[f"{prefix}.A"][:, layer], params[f"{prefix}.B"][:, layer], self.scale))
            yield
        finally:
            for linear, previous in reversed(saved):
                setattr(linear, _LORA, previous)

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "attention": list(self.attention), "sides": list(self.sides)}
