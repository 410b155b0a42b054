"""LoRA on a T5 or causal main model: generated per-example low-rank updates of chosen projections.

For each adapted projection ``W`` (an ``nn.Linear`` of d_in -> d_out: on T5 ``q``, ``k``, ``v`` or ``o`` of the
encoder/decoder self-attention or of the decoder cross-attention ``EncDecAttention``; on a causal LM peft's
``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` of every layer) and each
example b::

    y_b = W x_b + (alpha / r) * B_b (A_b x_b)        A_b: r x d_in,  B_b: d_out x r

Which projections exist is the main model's backbone family's to say (``lora_sites`` in hypergen/models/backbones/).
Slot groups, per side, attention and projection, e.g. ``"encoder.self.q.A"`` and ``"encoder.self.q.B"`` (a causal
LM: per projection, ``"layers.q_proj.A"``):
``num_layers`` (that side's layer count) x ``rank`` rows x width. The A group has width d_in; the B group has width
d_out and holds **B transposed** (r x d_out), so both are "r rows" and the generic projector serves them (HART
feeds one state row per layer and the projector's Linear1 expands it to r rows). For T5's q/k/v, d_in = d_model
and d_out = n_heads * d_kv; for ``o`` it is the other way round. peft's ``lora_B.weight`` is d_out x r, the
transpose of the slot.

Adapter folder (``adapter_format = "lora"``: peft's format, loadable with
``peft.PeftModel.from_pretrained(main_model, FOLDER)``)::

    FOLDER/adapter_config.json        peft's LoraConfig (``LoraConfig.to_dict()``): r, lora_alpha, target_modules (a
                                      regex matching exactly the adapted projections), task_type SEQ_2_SEQ_LM
                                      (CAUSAL_LM for a causal LM), ...
    FOLDER/adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r x d_in) and .lora_B.weight
                                      (d_out x r), e.g. base_model.model.encoder.block.0.layer.0.SelfAttention.q.*
                                      (peft drops the adapter name "default" from the saved keys)

:meth:`LoraTarget.load` reads such a folder (also one written by peft itself) without peft, for a T5 or a causal LM
(keys ``base_model.model.model.layers.<i>.self_attn.q_proj.lora_A.weight``, ...).

Mechanism: :meth:`LoraTarget.prepare` registers a forward hook on each chosen ``nn.Linear``. Outside
:meth:`LoraTarget.applied` the hook returns ``None``, so the model is exactly the stock model. Inside, each Linear
holds its per-example (A, B^T) for the duration of the ``with`` block and the hook adds the low-rank update with
batched einsums (no loop over examples). When the Linear's batch is a multiple of the parameters' batch (``generate``
with beam search runs the decoder on B * beams rows while the encoder ran on B), the parameters are
``repeat_interleave``-d, as in :mod:`.prefix`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import HypergenError
from ...io import atomic_save_tensors, read_safetensors
from ...models.backbones import causal, family, t5
from ...models.backbones.base import LinearSite
from ...registry import registry
from ..base import ADAPTER_CONFIG, TEMPORARY_ATTRIBUTE_PREFIX, PEFTTarget, SlotGroup, expand_to_batch

_SITE = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora_site"  # on a hooked Linear: (side, attention, projection, layer index)
_HOOK = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora_hook"  # the hook's handle (prepare is idempotent)
_LORA = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora"  # (A: P x r x d_in, B^T: P x r x d_out, scale), while applied

PROJECTIONS = (*t5.LORA_PROJECTIONS, *causal.LORA_PROJECTIONS)  # any family's; the family checks its own
ATTENTIONS = t5.LORA_ATTENTIONS
SIDES = t5.LORA_SIDES

LORA_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_PEFT_KEY = re.compile(r"base_model\.model\.(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\."
                       r"(SelfAttention|EncDecAttention)\.(q|k|v|o)\.lora_(A|B)\.weight")
_ATTENTION_OF = {name: (att, index) for att, (index, name) in ATTENTIONS.items()}
_CAUSAL_PEFT_KEY = re.compile(r"base_model\.model\.(?:\w+\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight")


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


@registry.peft_targets.register("lora.v1")
class LoraTarget(PEFTTarget):
    """Per-example LoRA of rank ``rank`` (scale ``alpha / rank``) on the ``targets`` projections of the chosen
    ``attention`` modules ("self" and/or "cross"; cross-attention exists only in the decoder) of each side in
    ``sides``. Slot groups ``"{side}.{attention}.{projection}.A"`` (num_layers x rank x d_in) and ``".B"``
    (num_layers x rank x d_out: B transposed)."""

    adapter_format = "lora"

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
        if self.sides == ("encoder",) and self.attention == ("cross",):
            raise ValueError("cross-attention exists only in the decoder; with sides=['encoder'] choose 'self'")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def sites(self, main_model: nn.Module) -> list[tuple[LinearSite, nn.Linear]]:
        """(site, Linear) for every adapted projection, in slot-group order (its family's ``lora_sites``)."""
        try:
            return family(main_model).lora_sites(main_model, self.targets, self.attention, self.sides)
        except ValueError as exc:
            raise HypergenError(f"peft.{exc}") from None

    def slot_groups(self, main_model: nn.Module) -> list[SlotGroup]:
        groups: dict[str, SlotGroup] = {}
        layers: dict[str, int] = {}
        for site, linear in self.sites(main_model):
            layers[site.group] = layers.get(site.group, 0) + 1
            groups[f"{site.group}.A"] = SlotGroup(f"{site.group}.A", site.source, layers[site.group], self.rank,
                                                  linear.in_features)
            groups[f"{site.group}.B"] = SlotGroup(f"{site.group}.B", site.source, layers[site.group], self.rank,
                                                  linear.out_features, zero_at_init=True)  # B = 0: peft's start
        return list(groups.values())

    def prepare(self, main_model: nn.Module) -> None:
        """Hook every chosen projection once (idempotent); the hook is inert outside :meth:`applied`."""
        for site, linear in self.sites(main_model):
            if not isinstance(linear, nn.Linear):
                raise RuntimeError(f"{site.path} is {type(linear).__name__}, not nn.Linear")
            if getattr(linear, _HOOK, None) is None:
                setattr(linear, _HOOK, linear.register_forward_hook(_lora_hook))
            setattr(linear, _SITE, site)

    @contextmanager
    def applied(self, main_model: nn.Module, params: dict[str, torch.Tensor]) -> Iterator[None]:
        """Inside the block, the projection of site group g, layer l adds ``scale * B (A x)`` per example, with
        ``A = params["g.A"][:, l]`` (B x r x d_in) and ``B^T = params["g.B"][:, l]`` (B x r x d_out), e.g. g =
        "encoder.self.q" (T5) or "layers.q_proj" (causal LM).

        On exit (also on an exception) the previous state of each Linear is restored.
        """
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for site, linear in self.sites(main_model):
                if getattr(linear, _SITE, None) != site:
                    raise RuntimeError("call LoraTarget.prepare(main_model) before applied()")
                saved.append((linear, getattr(linear, _LORA, None)))
                setattr(linear, _LORA, (params[f"{site.group}.A"][:, site.layer], params[f"{site.group}.B"][:, site.layer],
                                        self.scale))
            yield
        finally:
            for linear, previous in reversed(saved):
                setattr(linear, _LORA, previous)

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "attention": list(self.attention), "sides": list(self.sides)}

    # ------------------------------------------------------------------------------ adapter folder (peft's format)

    def peft_target_modules(self, main_model: nn.Module) -> str:
        """A regex (peft full-matches a string ``target_modules`` against module names) naming exactly the adapted
        projections, e.g. ``(?:encoder\\.block\\.\\d+\\.layer\\.0\\.SelfAttention\\.q|...)``."""
        templates = dict.fromkeys(site.path_template for site, _ in self.sites(main_model))
        return "(?:" + "|".join(re.escape(t).replace(re.escape("{layer}"), r"\d+") for t in templates) + ")"

    def peft_state_dict(self, main_model: nn.Module, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One task's ``params`` ({group: num_layers x r x width}) under peft's saved key names.

        ``lora_A.weight`` is the A slot of the layer (r x d_in); ``lora_B.weight`` is the transpose of the B slot
        (d_out x r), so peft computes ``lora_B(lora_A(x)) * lora_alpha / r``, exactly this target's update.
        """
        state = {}
        for site, _ in self.sites(main_model):
            name = PEFT_PREFIX + site.path
            state[f"{name}.lora_A.weight"] = params[f"{site.group}.A"][site.layer].detach().float().contiguous()
            state[f"{name}.lora_B.weight"] = params[f"{site.group}.B"][site.layer].detach().float().t().contiguous()
        return state

    def export(self, folder: Path, params: dict[str, torch.Tensor], main_model: nn.Module,
               base_model_name_or_path: str | None, fusion_in_decoder: bool) -> dict[str, Any]:
        """Write ``adapter_model.safetensors``; return peft's ``LoraConfig`` of this target, serialised as peft's
        ``save_pretrained`` does (``to_dict()``, sets as lists). Fusion states are not peft's to know."""
        from peft import LoraConfig

        atomic_save_tensors(Path(folder) / LORA_WEIGHTS, self.peft_state_dict(main_model, params),
                            metadata={"format": "pt"})
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.peft_target_modules(main_model),
                            lora_dropout=0.0, bias="none", task_type=family(main_model).PEFT_TASK_TYPE,
                            inference_mode=True,
                            base_model_name_or_path=base_model_name_or_path)
        return {key: list(value) if isinstance(value, set) else value for key, value in config.to_dict().items()}

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any],
             main_model: nn.Module) -> tuple["LoraTarget", dict[str, torch.Tensor]]:
        """Rebuild the target and its parameters ({group: 1 x L x r x width}) from a peft LoRA folder, checking that
        it fits ``main_model``: every layer of each adapted projection, with matching widths."""
        config_file, weights = Path(folder) / ADAPTER_CONFIG, Path(folder) / LORA_WEIGHTS
        for key, supported in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False)):
            if config.get(key, supported) != supported:
                raise HypergenError(f"{config_file}: {key}={config[key]!r} is not supported (hypergen applies plain "
                                    "LoRA)")
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise HypergenError(f"{config_file}: rank_pattern/alpha_pattern are not supported")
        rank, alpha = config.get("r"), config.get("lora_alpha")
        if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
            raise HypergenError(f"{config_file}: 'r' and 'lora_alpha' must be a positive integer and a number")
        state = read_safetensors(weights, "LoRA adapter weights")
        if family(main_model) is t5:
            found = _peft_weights_by_site(weights, state)
            choice = {"sides": sorted({g.split(".")[0] for g in found}, key=SIDES.index),
                      "attention": sorted({g.split(".")[1] for g in found}, key=list(ATTENTIONS).index)}
        else:
            found, choice = _causal_peft_weights(weights, state), {"attention": ["self"]}
        targets = sorted({g.split(".")[-1] for g in found}, key=PROJECTIONS.index)
        try:
            target = cls(rank=rank, alpha=float(alpha), targets=targets, **choice)
        except ValueError as exc:
            raise HypergenError(f"{weights}: {exc}") from None
        sites = target.sites(main_model)
        layer_counts: dict[str, int] = {}
        for site, _ in sites:
            layer_counts[site.group] = layer_counts.get(site.group, 0) + 1
        if set(found) != set(layer_counts):
            raise HypergenError(f"{weights}: adapts {sorted(found)}, which is not every projection of "
                                f"{sorted(layer_counts)}; hypergen needs the same projections on each side")
        sources = {site.group: site.source for site, _ in sites}
        for group, layers in found.items():
            count, source = layer_counts[group], sources[group]
            if sorted(layers) != list(range(count)):
                raise HypergenError(f"{weights}: has {source} layers {_ranges(sorted(layers))} of {group}, but the "
                                    f"main model has {count} {source} layers (an adapter from another main model?)")
        params: dict[str, list[torch.Tensor]] = {}
        for site, linear in sites:
            pair = found[site.group][site.layer]
            name = site.path
            if set(pair) != {"A", "B"}:
                raise HypergenError(f"{weights}: {name} lacks lora_{'B' if 'A' in pair else 'A'}.weight")
            a, b = pair["A"], pair["B"]
            want_a, want_b = (rank, linear.in_features), (linear.out_features, rank)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                raise HypergenError(f"{weights}: {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, but "
                                    f"the main model needs {want_a} and {want_b} (an adapter from another main model?)")
            params.setdefault(f"{site.group}.A", []).append(a)
            params.setdefault(f"{site.group}.B", []).append(b.t())
        return target, {g: torch.stack(v)[None] for g, v in params.items()}


def _peft_weights_by_site(weights: Path, state: dict[str, torch.Tensor]
                          ) -> dict[str, dict[int, dict[str, torch.Tensor]]]:
    """peft's saved LoRA tensors of a T5 as {slot-group stem "side.attention.projection": {layer: {"A" or "B":
    tensor}}}; a key that is not a LoRA weight of a T5 attention projection raises an error naming ``weights``."""
    found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = _PEFT_KEY.fullmatch(key)
        if not match:
            raise HypergenError(f"{weights}: unexpected key {key!r}; expected peft LoRA keys of T5 attention "
                                "projections (base_model.model.<side>.block.<i>.layer.<j>.<Attention>.<q|k|v|o>."
                                "lora_<A|B>.weight)")
        side, layer, index, name, projection, which = match.groups()
        att, expected_index = _ATTENTION_OF[name]
        if int(index) != expected_index:
            raise HypergenError(f"{weights}: key {key!r} puts {name} at layer.{index}; T5 has it at "
                                f"layer.{expected_index}")
        found.setdefault(f"{side}.{att}.{projection}", {}).setdefault(int(layer), {})[which] = tensor
    if not found:
        raise HypergenError(f"{weights}: holds no LoRA weights")
    return found


def _causal_peft_weights(weights: Path, state: dict[str, torch.Tensor]) -> dict[str, dict[int, dict[str, torch.Tensor]]]:
    """peft's saved LoRA tensors of a causal LM as {slot-group stem "layers.<projection>": {layer: {"A" or "B":
    tensor}}}; a key that is not a LoRA weight of one of peft's projection names raises an error naming
    ``weights``."""
    found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = _CAUSAL_PEFT_KEY.fullmatch(key)
        if not match or causal.LORA_PROJECTIONS.get(match.group(3)) != match.group(2):
            raise HypergenError(f"{weights}: unexpected key {key!r}; expected peft LoRA keys of a causal LM's "
                                "projections (base_model.model.model.layers.<i>.<self_attn|mlp>.<q_proj|...>."
                                "lora_<A|B>.weight)")
        layer, _, projection, which = match.groups()
        found.setdefault(f"{causal.GROUP}.{projection}", {}).setdefault(int(layer), {})[which] = tensor
    if not found:
        raise HypergenError(f"{weights}: holds no LoRA weights")
    return found


def _ranges(values: list[int]) -> str:
    return f"{values[0]}..{values[-1]}" if values else "(none)"
