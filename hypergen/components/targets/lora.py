"""LoRA on any family's main model: generated per-example low-rank updates of chosen projections.

For each adapted projection ``W`` (an ``nn.Linear`` of d_in -> d_out, or GPT-2's Conv1D: on T5 ``q``, ``k``, ``v``
or ``o`` of the encoder/decoder self-attention or of the decoder cross-attention ``EncDecAttention``; on a
Llama-style LM peft's ``q_proj``, ..., ``down_proj`` of every layer; on GPT-2 ``c_attn``, ``c_proj``, ``c_fc``)
and each example b::

    y_b = W x_b + (alpha / r) * B_b (A_b x_b)        A_b: r x d_in,  B_b: d_out x r

Which projections exist is the main model's family's to say (``Family.sites`` in hypergen/models/families/):
``targets`` names peft's module names ("q_proj", "c_attn") or roles ("attn.q", "mlp.in"); without ``targets``, a
LoRA adapts peft's default target modules of the family (T5: q, v; Llama, Qwen2, Mistral, Gemma 3: q_proj, v_proj;
GPT-2: c_attn).
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
                                      (CAUSAL_LM for a causal LM), fan_in_fan_out (true for GPT-2's Conv1D), ...
    FOLDER/adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r x d_in) and .lora_B.weight
                                      (d_out x r), e.g. base_model.model.encoder.block.0.layer.0.SelfAttention.q.*
                                      (peft drops the adapter name "default" from the saved keys)

:meth:`LoraTarget.load` reads such a folder (also one written by peft itself) without peft, for any family (keys
``base_model.model.<site's module path>.lora_A.weight``, e.g. ``base_model.model.model.layers.<i>.self_attn.q_proj``).

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
from ...models.backbones.base import LinearSite
from ...models.families import family_of, lora_target_names
from ...models.families.base import site_widths
from ...registry import registry
from ..base import ADAPTER_CONFIG, TEMPORARY_ATTRIBUTE_PREFIX, PEFTTarget, SlotGroup, expand_to_batch

_SITE = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora_site"  # on a hooked Linear: (side, attention, projection, layer index)
_HOOK = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora_hook"  # the hook's handle (prepare is idempotent)
_LORA = f"{TEMPORARY_ATTRIBUTE_PREFIX}lora"  # (A: P x r x d_in, B^T: P x r x d_out, scale), while applied

ATTENTIONS = ("self", "cross")  # cross: an encoder-decoder's decoder only
SIDES = ("encoder", "decoder")  # an encoder-decoder's; a causal LM has one group of layers

LORA_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_PEFT_KEY = re.compile(r"base_model\.model\.(.+)\.lora_(A|B)\.weight")


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
    """Per-example LoRA of rank ``rank`` (scale ``alpha / rank``) on the ``targets`` projections (peft's module
    names or roles; None: the family's peft defaults) of the chosen ``attention`` modules ("self" and/or "cross";
    cross-attention exists only in an encoder-decoder's decoder) of each side in ``sides`` (an encoder-decoder's).
    Slot groups ``"{site group}.A"`` (num_layers x rank x d_in), e.g. ``"encoder.self.q.A"``, and ``".B"``
    (num_layers x rank x d_out: B transposed)."""

    adapter_format = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0, targets: tuple[str, ...] | list[str] | None = None,
                 attention: tuple[str, ...] | list[str] = ("self",),
                 sides: tuple[str, ...] | list[str] = ("encoder", "decoder")) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        checks = [("attention", attention, ATTENTIONS), ("sides", sides, SIDES)]
        if targets is not None:  # None: the family's defaults; names: some family's (each checks its own)
            checks.insert(0, ("targets", targets, lora_target_names()))
        for name, values, allowed in checks:
            if isinstance(values, str) or not values:
                raise ValueError(f"{name} must be a non-empty list, got {values!r}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"{name}: unknown {unknown}; allowed: {', '.join(allowed)}")
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.targets = tuple(dict.fromkeys(targets)) if targets is not None else None
        self.attention = tuple(dict.fromkeys(attention))
        self.sides = tuple(dict.fromkeys(sides))
        if self.sides == ("encoder",) and self.attention == ("cross",):
            raise ValueError("cross-attention exists only in the decoder; with sides=['encoder'] choose 'self'")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def sites(self, main_model: nn.Module) -> list[tuple[LinearSite, nn.Module]]:
        """(site, projection) for every adapted projection, in slot-group order (its family's ``sites``)."""
        try:
            return family_of(main_model).sites(main_model, self.targets, self.attention, self.sides)
        except ValueError as exc:
            raise HypergenError(f"peft.{exc}") from None

    def slot_groups(self, main_model: nn.Module) -> list[SlotGroup]:
        groups: dict[str, SlotGroup] = {}
        layers: dict[str, int] = {}
        for site, linear in self.sites(main_model):
            layers[site.group] = layers.get(site.group, 0) + 1
            d_in, d_out = site_widths(site, linear)
            groups[f"{site.group}.A"] = SlotGroup(f"{site.group}.A", site.source, layers[site.group], self.rank, d_in,
                                                  fan_in_lr=True)
            groups[f"{site.group}.B"] = SlotGroup(f"{site.group}.B", site.source, layers[site.group], self.rank,
                                                  d_out, zero_at_init=True, fan_in_lr=True)  # B = 0: peft's start
        return list(groups.values())

    def prepare(self, main_model: nn.Module) -> None:
        """Hook every chosen projection once (idempotent); the hook is inert outside :meth:`applied`."""
        for site, linear in self.sites(main_model):
            if not isinstance(linear, nn.Linear) and not site.fan_in_fan_out:
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
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets) if self.targets else None,
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
        fan_in_fan_out = any(site.fan_in_fan_out for site, _ in self.sites(main_model))  # GPT-2's Conv1D, as peft
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.peft_target_modules(main_model),
                            lora_dropout=0.0, bias="none", task_type=family_of(main_model).peft_task_type,
                            inference_mode=True, fan_in_fan_out=fan_in_fan_out,
                            base_model_name_or_path=base_model_name_or_path)
        return {key: list(value) if isinstance(value, set) else value for key, value in config.to_dict().items()}

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any],
             main_model: nn.Module) -> tuple["LoraTarget", dict[str, torch.Tensor]]:
        """Rebuild the target and its parameters ({group: 1 x L x r x width}) from a peft LoRA folder, checking that
        it fits ``main_model``: every layer of each adapted projection, with matching widths."""
        config_file, weights = Path(folder) / ADAPTER_CONFIG, Path(folder) / LORA_WEIGHTS
        for key, supported in (("use_dora", False), ("use_rslora", False)):
            if config.get(key, supported) != supported:
                raise HypergenError(f"{config_file}: {key}={config[key]!r} is not supported (hypergen applies plain "
                                    "LoRA)")
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise HypergenError(f"{config_file}: rank_pattern/alpha_pattern are not supported")
        rank, alpha = config.get("r"), config.get("lora_alpha")
        if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
            raise HypergenError(f"{config_file}: 'r' and 'lora_alpha' must be a positive integer and a number")
        state = read_safetensors(weights, "LoRA adapter weights")
        family = family_of(main_model)
        found, chosen = _peft_weights_by_site(weights, state, main_model, family.all_sites(main_model))
        if config.get("fan_in_fan_out") and not all(site.fan_in_fan_out for site in chosen):
            raise HypergenError(f"{config_file}: fan_in_fan_out=True is not supported for {type(main_model).__name__}'s"
                                " nn.Linear projections (hypergen applies plain LoRA)")
        choice = {"attention": sorted({s.attention for s in chosen if s.attention} or {"self"}, key=ATTENTIONS.index)}
        if family.encoder_decoder:
            choice["sides"] = sorted({s.source for s in chosen}, key=SIDES.index)
        names = family.target_names(main_model)
        targets = sorted({s.module for s in chosen}, key=names.index)
        if tuple(targets) == family.default_lora_targets:
            targets = None  # as a target written without targets (peft's defaults) describes itself
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
            d_in, d_out = site_widths(site, linear)
            want_a, want_b = (rank, d_in), (d_out, rank)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                raise HypergenError(f"{weights}: {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, but "
                                    f"the main model needs {want_a} and {want_b} (an adapter from another main model?)")
            params.setdefault(f"{site.group}.A", []).append(a)
            params.setdefault(f"{site.group}.B", []).append(b.t())
        return target, {g: torch.stack(v)[None] for g, v in params.items()}


def _peft_weights_by_site(weights: Path, state: dict[str, torch.Tensor], main_model: nn.Module,
                          sites: list[tuple[LinearSite, nn.Module]]
                          ) -> tuple[dict[str, dict[int, dict[str, torch.Tensor]]], list[LinearSite]]:
    """peft's saved LoRA tensors as {slot-group stem: {layer: {"A" or "B": tensor}}}, and the sites they adapt; a
    key that is not the LoRA weight of one of the main model's ``sites`` raises an error naming ``weights``."""
    templates = {site.path_template: site for site, _ in reversed(sites)}  # each template's layer-0 site
    layer_of = {t: re.compile(re.escape(t).replace(re.escape("{layer}"), r"(\d+)")) for t in templates}
    found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    chosen: dict[str, LinearSite] = {}
    for key, tensor in state.items():
        match = _PEFT_KEY.fullmatch(key)
        site = layer = None
        for template, pattern in layer_of.items():
            if match and (where := pattern.fullmatch(match.group(1))):
                site, layer = templates[template], int(where.group(1))
        if site is None:
            example = f"{PEFT_PREFIX}{sites[0][0].path}.lora_A.weight" if sites else "(none)"
            raise HypergenError(f"{weights}: unexpected key {key!r}; expected peft LoRA keys of "
                                f"{type(main_model).__name__}'s projections (base_model.model.<module>.lora_<A|B>."
                                f"weight, e.g. {example})")
        found.setdefault(site.group, {}).setdefault(layer, {})[match.group(2)] = tensor
        chosen[site.path_template] = site
    if not found:
        raise HypergenError(f"{weights}: holds no LoRA weights")
    return found, list(chosen.values())


def _ranges(values: list[int]) -> str:
    return f"{values[0]}..{values[-1]}" if values else "(none)"
