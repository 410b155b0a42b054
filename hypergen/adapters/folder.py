"""Adapter folders: export one task's generated parameters, load them back, and what every format shares.

Each PEFT target owns its format (as each peft tuner owns its config and save format): ``target.export`` writes
its weight files and returns its ``adapter_config.json``, ``TargetClass.load`` reads them back (see
:mod:`hypergen.components.targets.lora`, peft's LoRA format, and :mod:`hypergen.components.targets.prefix`).
This module keeps what is common to every folder written by ``hypergen adapt`` (atomically: into a temporary
folder beside the target, then renamed)::

    FOLDER/adapter_config.json     the target's config (for LoRA peft's LoraConfig, so peft loads the folder)
    FOLDER/<the target's weights>  e.g. adapter_model.safetensors (LoRA) or prefix.safetensors
    FOLDER/hypergen_adapter.json   "peft_target": the target's registered name (e.g. "lora.v1"), which picks the
                                   class that loads the folder (plugins' targets resolve through entry points);
                                   "hypergen_adapter": its format ("lora", "prefix"); the run's settings for
                                   prediction (fusion_in_decoder, max_input_length, max_new_tokens, num_beams,
                                   dtype, demo_style and prompt: which prompt a causal LM's queries are written
                                   in, "plain" or "chat", data.prompt as the run resolved it) and where the
                                   adapter came from (run, task, demos_sha256, peft)
    FOLDER/fusion.safetensors      ("states": n_d x d_h, "mask": n_d, and a causal LM's "gate": L per-layer fusion
                                   gates) the hypernetwork encoder's output for the
                                   demos, when the run used fusion-in-decoder (the main decoder cross-attends to
                                   it). peft knows nothing of it, so peft alone reproduces only the LoRA part of
                                   such a run; ``hypergen predict`` uses both.
    FOLDER/base_model/             when the run's main model is a ``tiny`` T5 (built from a config, so nothing
                                   names it): the frozen main model as a Hugging Face folder, and
                                   ``base_model_name_or_path`` is its absolute path. If the adapter folder is
                                   moved, ``predict`` falls back to ``FOLDER/base_model``.

A folder without ``peft_target`` (written by an earlier hypergen, or a peft LoRA folder from elsewhere, which has
no ``hypergen_adapter.json`` at all: predict then uses default settings and no fusion) is recognised by its
``adapter_config.json`` through :data:`LEGACY_TARGETS`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..components.base import ADAPTER_CONFIG, PEFTTarget
from ..data.tasks import Task
from ..errors import HypergenError, UnknownComponentError
from ..folders import FolderKind, prepare_output_dir, staged_folder
from ..io import atomic_save_tensors, atomic_write_json, read_json_object, read_safetensors
from ..models.hypernet import TaskParameters
from ..registry import registry

FUSION_WEIGHTS = "fusion.safetensors"
SETTINGS = "hypergen_adapter.json"
BASE_MODEL_DIR = "base_model"
DEFAULT_SETTINGS = {"fusion_in_decoder": False, "max_input_length": 512, "max_new_tokens": 128, "num_beams": 1,
                    "dtype": "float32", "demo_style": "sni", "prompt": "plain"}
# demo_style, prompt: a causal LM's prompt (CAUSAL_PROMPT or the chat template); an adapter written before prompt
# existed was trained plain

# What `hypergen adapt` writes (hypergen_adapter.json, written by it alone, marks the folder): --overwrite deletes
# only these (the built-in targets' files among them); files a plugin target writes under other names are left in
# place by --overwrite, never deleted on a guess.
ADAPTER_FOLDER = FolderKind(
    "adapter", SETTINGS, frozenset({ADAPTER_CONFIG, FUSION_WEIGHTS, SETTINGS, BASE_MODEL_DIR,
                                    "adapter_model.safetensors", "prefix.safetensors"}))

# Folders that name no target: (adapter_config.json field, value) -> the registered target that reads them.
LEGACY_TARGETS = {("peft_type", "LORA"): "lora.v1", ("hypergen_adapter", "prefix"): "prefix.v1"}


# ------------------------------------------------------------------------------------------------- the config

def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HypergenError(f"{path}: not found; not an adapter folder written by `hypergen adapt` or peft")
    return read_json_object(path, "adapter file")


def registered_name(target: PEFTTarget) -> str:
    """The name ``target``'s class is registered under in ``registry.peft_targets`` (built-in or plugin), which an
    adapter folder stores so that loading finds the same class."""
    names = sorted(name for name, factory in registry.entries("peft_targets").items() if factory is type(target))
    if not names:
        raise HypergenError(f"peft target {type(target).__name__} is not registered in hypergen's registry "
                            "(registry.peft_targets or the hypergen_peft_targets entry points), so an adapter "
                            "folder cannot name it")
    return names[0]


def _target_class(name: Any, where: Path) -> type[PEFTTarget]:
    """The registered PEFTTarget class called ``name``; errors name ``where`` (the file that names it)."""
    if not isinstance(name, str):
        raise HypergenError(f"{where}: 'peft_target' must be a registered peft target name, got {name!r}")
    try:
        factory = registry.resolve("peft_targets", name)
    except UnknownComponentError as exc:
        raise HypergenError(f"{where}: {exc}") from None
    if not (isinstance(factory, type) and issubclass(factory, PEFTTarget)):
        raise HypergenError(f"{where}: peft target {name!r} is registered as {factory!r}, not a PEFTTarget class, "
                            "so it has no adapter format")
    return factory


def read_adapter_config(folder: str | Path) -> tuple[type[PEFTTarget], dict[str, Any], dict[str, Any]]:
    """``(target class, adapter_config, settings)`` of an adapter folder. The class is the registered target
    named by ``hypergen_adapter.json`` (or, for folders that name none, by :data:`LEGACY_TARGETS`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HypergenError(f"--adapter: {folder} is not a folder")
    config = _read_json(folder / ADAPTER_CONFIG)
    settings = dict(DEFAULT_SETTINGS)
    if (folder / SETTINGS).is_file():
        settings.update(_read_json(folder / SETTINGS))
    if "peft_target" in settings:
        target_class = _target_class(settings["peft_target"], folder / SETTINGS)
    else:
        legacy = [name for (key, value), name in LEGACY_TARGETS.items() if config.get(key) == value]
        if not legacy:
            raise HypergenError(f"{folder / ADAPTER_CONFIG}: names no peft target ({SETTINGS} has no "
                                "'peft_target') and is neither a peft LoRA config (peft_type 'LORA') nor a "
                                "hypergen prefix adapter (hypergen_adapter 'prefix')")
        target_class = _target_class(legacy[0], folder / ADAPTER_CONFIG)
    if "fusion_in_decoder" in config:  # a format that records it (prefix) is the authority
        settings["fusion_in_decoder"] = bool(config["fusion_in_decoder"])
    return target_class, config, settings


def base_model_of(folder: str | Path) -> str:
    """The main model an adapter names (``base_model_name_or_path``), falling back to ``FOLDER/base_model``
    when the named local folder no longer exists (a moved adapter folder)."""
    folder = Path(folder)
    _, config, _ = read_adapter_config(folder)
    name = config.get("base_model_name_or_path")
    local = folder / BASE_MODEL_DIR
    if name and Path(name).expanduser().exists():
        return name
    if (local / "config.json").is_file():
        return str(local)
    if not name:
        raise HypergenError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path is not set; pass --base-model")
    return name


# ------------------------------------------------------------------------------------------- load and write

@dataclass
class Adapter:
    """A loaded adapter: its target (prepared on the main model) and one task's parameters (a batch of 1). To
    decode with it, stack it (alone or with others) into a :class:`hypergen.adapters.stack.AdapterSet`."""

    folder: Path
    kind: str                                  # the target's adapter format, e.g. "lora" or "prefix"
    target: PEFTTarget
    params: dict[str, torch.Tensor]            # {group: 1 x L x rows x width}
    fusion_states: torch.Tensor | None = None  # 1 x n_d x d_h
    fusion_mask: torch.Tensor | None = None    # 1 x n_d
    fusion_gate: torch.Tensor | None = None    # L (a causal LM's fusion, Family.fused)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fusion(self) -> bool:
        return self.fusion_states is not None

    def to(self, device) -> "Adapter":
        self.params = {k: v.to(device) for k, v in self.params.items()}
        if self.fusion:
            self.fusion_states, self.fusion_mask = self.fusion_states.to(device), self.fusion_mask.to(device)
        if self.fusion_gate is not None:
            self.fusion_gate = self.fusion_gate.to(device)
        return self


def load_adapter(folder: str | Path, main_model: nn.Module) -> Adapter:
    """Load an adapter folder for ``main_model`` (and prepare its target on it).

    The registered target the folder names rebuilds itself and its parameters (``TargetClass.load``; LoRA folders
    are read from peft's safetensors without peft). An adapter made for another main model (other layer counts
    or widths) raises a one-line :class:`HypergenError` naming the file and the mismatch.
    """
    folder = Path(folder)
    target_class, config, settings = read_adapter_config(folder)
    target, params = target_class.load(folder, config, main_model)
    states = mask = gate = None
    if settings.get("fusion_in_decoder"):
        fusion_file = folder / FUSION_WEIGHTS
        fusion = read_safetensors(fusion_file, "fusion-in-decoder states of the adapter")
        if not {"states", "mask"} <= set(fusion) <= {"states", "mask", "gate"} or fusion["states"].dim() != 2:
            raise HypergenError(f"{fusion_file}: expected 'states' (n_d x d_h), 'mask' (n_d) and optionally 'gate' "
                                "(one per layer)")
        width = main_model.get_input_embeddings().embedding_dim  # d_model (T5), hidden_size (a causal LM)
        if fusion["states"].shape[1] != width:
            raise HypergenError(f"{fusion_file}: states have width {fusion['states'].shape[1]}, but the main model "
                                f"has width {width} (an adapter from another main model?)")
        states, mask, gate = fusion["states"][None], fusion["mask"][None], fusion.get("gate")
    target.prepare(main_model)
    device = next(main_model.parameters()).device
    dtype = next(main_model.parameters()).dtype
    adapter = Adapter(folder, target_class.adapter_format, target, {k: v.to(dtype) for k, v in params.items()},
                      None if states is None else states.to(dtype), mask,
                      None if gate is None else gate.float(), settings)
    return adapter.to(device)


def write_adapter(folder: Path, target: PEFTTarget, params: dict[str, torch.Tensor], main_model: nn.Module,
                  base_model_name_or_path: str | None, fusion: tuple[torch.Tensor, ...] | None = None,
                  settings: dict[str, Any] | None = None) -> None:
    """Write one task's ``params`` ({group: num_layers x rows x width}) into ``folder`` (created if needed): the
    target's own files and config (``target.export``), then the fusion states and ``hypergen_adapter.json``.

    ``fusion``: (states n_d x d_h, mask n_d[, gate L]) of the hypernetwork encoder, for runs with fusion-in-decoder
    (the gate: a causal LM's, per main-model layer)
    """
    folder = Path(folder)
    name = registered_name(target)
    folder.mkdir(parents=True, exist_ok=True)
    config = target.export(folder, params, main_model, base_model_name_or_path, fusion is not None)
    atomic_write_json(folder / ADAPTER_CONFIG, config)
    if fusion is not None:
        tensors = {"states": fusion[0].detach().float(), "mask": fusion[1].detach()}
        if len(fusion) > 2 and fusion[2] is not None:
            tensors["gate"] = fusion[2].detach().float()
        atomic_save_tensors(folder / FUSION_WEIGHTS, tensors)
    meta = {"hypergen_adapter": target.adapter_format, "peft_target": name, **DEFAULT_SETTINGS, **(settings or {}),
            "fusion_in_decoder": fusion is not None}
    atomic_write_json(folder / SETTINGS, meta)


# ------------------------------------------------------------------------------------------ adapt: run -> adapter

def demos_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@torch.no_grad()
def generate_task_parameters(assembled, task: Task) -> tuple[TaskParameters, str]:
    """One hypernetwork forward pass over ``task``'s demos, in the run's demo format. Returns the parameters
    (a batch of one task) and the demos text."""
    method = assembled.method
    method.eval()
    text = assembled.collator.demos(task)
    ids, mask = assembled.collator.encode_demos([task])
    return method.module(ids.to(assembled.device), mask.to(assembled.device)).detach(), text


def prediction_settings(assembled) -> dict[str, Any]:
    """How a loaded run writes and decodes queries (its prompt, lengths, beams and dtype): the settings an adapter
    folder records for ``hypergen predict``, and what a :class:`hypergen.task_adapter.TaskAdapter` decodes with."""
    recipe = assembled.recipe
    return {"max_input_length": recipe.data.max_input_length, "demo_style": recipe.data.demo_style,
            "prompt": getattr(assembled.collator, "prompt", "plain"),
            "max_new_tokens": recipe.evaluation.max_new_tokens, "num_beams": recipe.evaluation.num_beams,
            "dtype": recipe.main_model.dtype, "fusion_in_decoder": bool(assembled.method.fusion)}


def export_adapter(assembled, task: Task, out: str | Path, run_dir: str | Path | None = None,
                   overwrite: bool = False, parameters: TaskParameters | None = None) -> Path:
    """Generate ``task``'s parameters with a loaded run and write them to ``out`` atomically (a temporary folder
    beside ``out``, then a rename). A ``tiny`` main model is saved into ``out/base_model``. ``parameters``: the
    task's parameters (a batch of one) when they were already generated, instead of a new pass."""
    from ..models.main import save_main_model

    out = prepare_output_dir(Path(out), ADAPTER_FOLDER, overwrite, "--out")
    recipe, method = assembled.recipe, assembled.method
    if parameters is None:
        task_params, text = generate_task_parameters(assembled, task)
    else:
        task_params, text = parameters, assembled.collator.demos(task)
    params = {k: v[0] for k, v in task_params.params.items()}
    fusion = (task_params.encoder_states[0], task_params.encoder_mask[0], task_params.fusion_gate) if method.fusion \
        else None
    final = out.resolve()
    if recipe.main_model.tiny is not None:
        base = str(final / BASE_MODEL_DIR)
    else:
        name = recipe.main_model.name_or_path
        base = str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name
    settings = {**prediction_settings(assembled), "run": str(Path(run_dir).resolve()) if run_dir else None,
                "task": task.name, "demos_sha256": demos_digest(text), "peft": recipe.peft.model_dump()}
    with staged_folder(final, ADAPTER_FOLDER) as tmp:
        write_adapter(tmp, method.target, params, method.main_model, base, fusion, settings)
        if recipe.main_model.tiny is not None:
            save_main_model(method.main_model, assembled.tokenizer, tmp / BASE_MODEL_DIR)
    return out
