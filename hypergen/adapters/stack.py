"""Several adapters decoded in one batch: what ``hypergen predict --adapter A --adapter B`` and
:func:`hypergen.predict_many` run.

The adapters' parameters are stacked into one set, {group: N x L x rows x width} for N adapters, and each example
of a batch gets its adapter's row (``TaskParameters.select``), exactly as training gives each example its task's
row: one ``generate`` per batch, whichever adapters the batch mixes, no loop over adapters. Fusion-in-decoder
states of different lengths are padded to the longest (N x n_max x d_h) and masked (N x n_max).

Adapters can share a batch only when they adapt the same main model in the same way: the same target (kind and
settings, e.g. LoRA rank and targets), the same parameter shapes, the same main model and the same prediction
settings (prompt, lengths, beams, dtype, fusion). Otherwise :meth:`AdapterSet.stack` raises a one-line
:class:`HypergenError` naming the two adapters and what differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .folder import Adapter, base_model_of, load_adapter, read_adapter_config
from ..errors import HypergenError
from ..models.adapted import adapted_generate
from ..models.hypernet import TaskParameters

# What every adapter of a batch must agree on (hypergen_adapter.json): how queries are written and decoded
SHARED_SETTINGS = ("fusion_in_decoder", "prompt", "demo_style", "max_input_length", "max_new_tokens", "num_beams",
                   "dtype")


@dataclass
class AdapterSet:
    """N adapters stacked for one main model: ``params`` {group: N x L x rows x width} (row i: ``names[i]``),
    ``fusion_states`` N x n_max x d_h and ``fusion_mask`` N x n_max (0 on padding) when they use fusion, and a causal
    LM's ``fusion_gate`` (L, one run's: the adapters must agree on it)."""

    names: list[str]
    target: Any                                # the PEFTTarget all of them share, prepared on the main model
    params: dict[str, torch.Tensor]
    fusion_states: torch.Tensor | None = None
    fusion_mask: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    fusion_gate: torch.Tensor | None = None

    @classmethod
    def stack(cls, adapters: dict[str, Adapter]) -> "AdapterSet":
        """Stack loaded adapters (each a batch of one) in the mapping's order, after checking that each agrees
        with the first (:func:`mismatch`)."""
        if not adapters:
            raise HypergenError("predict: no adapters given")
        names = list(adapters)
        first = adapters[names[0]]
        for name in names[1:]:
            problem = mismatch(first, adapters[name])
            if problem:
                raise HypergenError(f"adapters {names[0]!r} and {name!r} cannot share a batch: {problem}")
        loaded = [adapters[name] for name in names]
        params = {group: torch.cat([a.params[group] for a in loaded]) for group in first.params}
        states = mask = None
        if first.fusion:
            width = max(a.fusion_states.shape[1] for a in loaded)
            states = torch.cat([_pad_to(a.fusion_states, width) for a in loaded])
            mask = torch.cat([_pad_to(a.fusion_mask, width) for a in loaded])
        return cls(names, first.target, params, states, mask, dict(first.settings), first.fusion_gate)

    @property
    def fusion(self) -> bool:
        return self.fusion_states is not None

    def rows(self, names: list[str]) -> torch.Tensor:
        """The row of each name (B,), for :meth:`per_example`."""
        index = {name: i for i, name in enumerate(self.names)}
        return torch.tensor([index[name] for name in names], dtype=torch.long)

    def per_example(self, rows: torch.Tensor) -> TaskParameters:
        """Each example's adapter parameters: {group: B x L x rows x width} with ``rows`` (B,) naming each example's
        adapter; the fusion states stay one row per adapter (``example_rows`` = ``rows``)."""
        device = next(iter(self.params.values())).device
        states = self.fusion_states if self.fusion else torch.zeros(len(self.names), 0, 1, device=device)
        mask = self.fusion_mask if self.fusion else torch.zeros(len(self.names), 0, dtype=torch.long, device=device)
        return TaskParameters(self.params, states, mask, None,  # type: ignore[arg-type]
                              fusion_gate=self.fusion_gate).select(rows.to(device))

    @torch.no_grad()
    def generate(self, main_model: nn.Module, rows: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, max_new_tokens: int, num_beams: int = 1) -> torch.Tensor:
        """Decode ``input_ids`` (B x n_x), example b with adapter ``rows[b]``; returns B x n_out token ids."""
        return adapted_generate(main_model, self.target, self.per_example(rows), input_ids, attention_mask,
                                self.fusion, max_new_tokens, num_beams)


def _pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` (1 x n [x d]) zero-padded along dim 1 to ``length``."""
    pad = torch.zeros(tensor.shape[0], length - tensor.shape[1], *tensor.shape[2:], dtype=tensor.dtype,
                      device=tensor.device)
    return torch.cat([tensor, pad], dim=1)


def mismatch(first: Adapter, other: Adapter) -> str | None:
    """What keeps ``other`` from sharing a batch with ``first`` (the target, its settings, parameter shapes or the
    prediction settings), or None."""
    if type(first.target) is not type(other.target) or first.kind != other.kind:
        return f"target {first.kind} vs {other.kind}"
    mine, theirs = first.target.describe(), other.target.describe()
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            return f"{first.kind} {key} {mine.get(key)!r} vs {theirs.get(key)!r}"
    if sorted(first.params) != sorted(other.params):
        return f"parameter groups {sorted(first.params)} vs {sorted(other.params)}"
    for group, value in first.params.items():
        if value.shape[1:] != other.params[group].shape[1:]:
            return f"{group} has shape {tuple(value.shape[1:])} vs {tuple(other.params[group].shape[1:])}"
    problem = settings_mismatch(first.settings, other.settings)
    if problem:
        return problem
    if first.fusion and first.fusion_states.shape[2:] != other.fusion_states.shape[2:]:
        return f"fusion states of width {first.fusion_states.shape[2]} vs {other.fusion_states.shape[2]}"
    gates = (first.fusion_gate, other.fusion_gate)
    if (gates[0] is None) != (gates[1] is None) or (gates[0] is not None and not torch.equal(*gates)):
        return "fusion gates differ (adapters of different runs)"
    return None


def settings_mismatch(first: dict[str, Any], other: dict[str, Any]) -> str | None:
    """The first of :data:`SHARED_SETTINGS` on which two adapters' settings differ, as "setting KEY A vs B"."""
    for key in SHARED_SETTINGS:
        if first.get(key) != other.get(key):
            return f"setting {key} {first.get(key)!r} vs {other.get(key)!r}"
    return None


# ------------------------------------------------------------------------------------- folders -> one batch

def _model_digest(name: str) -> str | None:
    """A digest of a local main-model folder's config and weights (None for a hub id)."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in (".safetensors", ".bin"):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def shared_main_model(folders: dict[str, Path]) -> str:
    """The main model every adapter folder names (``base_model_name_or_path``; a ``tiny`` model saved in each
    folder counts as the same when the saved config and weights are byte-identical). Raises a one-line error
    naming two adapters whose main models differ."""
    names = list(folders)
    first = base_model_of(folders[names[0]])
    first_digest = None
    for name in names[1:]:
        other = base_model_of(folders[name])
        if other != first:
            first_digest = first_digest or _model_digest(first)
        if other != first and (first_digest is None or first_digest != _model_digest(other)):
            raise HypergenError(f"adapters {names[0]!r} and {name!r} cannot share a batch: main model {first} vs "
                                f"{other}")
    return first


def load_adapter_set(folders: dict[str, str | Path], base_model: str | None = None):
    """Load adapter folders ({name: folder}) onto one main model (``base_model``, or the one they all name) and
    stack them. Returns ``(AdapterSet, main model, tokenizer)``."""
    from ..models.main import load_main_model
    from ..recipe import MainModel
    from ..runs.devices import resolve_device

    folders = {name: Path(folder) for name, folder in folders.items()}
    settings = {name: read_adapter_config(folder)[2] for name, folder in folders.items()}  # readable, before loading
    names = list(folders)
    for name in names[1:]:  # what the folders' settings tell apart fails before the main model loads
        problem = settings_mismatch(settings[names[0]], settings[name])
        if problem:
            raise HypergenError(f"adapters {names[0]!r} and {name!r} cannot share a batch: {problem}")
    name_or_path = base_model or shared_main_model(folders)
    dtype = settings[names[0]].get("dtype", "float32")
    model, tokenizer = load_main_model(MainModel(name_or_path=name_or_path, dtype=dtype), resolve_device("auto"))
    adapters = {name: load_adapter(folder, model) for name, folder in folders.items()}
    return AdapterSet.stack(adapters), model, tokenizer
