"""``hypergen.HyperNetwork``: a trained hypernetwork in Python, in the Hugging Face style.

:class:`PretrainedHyperNetwork` (exported as ``hypergen.HyperNetwork``) is an *assembled run*: the frozen main
model, the trained hypernetwork (the ``nn.Module`` :class:`hypergen.models.hypernet.HyperNetwork`, as ``.module``),
the PEFT target and the tokenizer. ``from_pretrained`` loads one from a run folder, a saved folder or a hub id;
``adapt`` turns demos into :class:`~hypergen.adapters.task.TaskAdapter` objects; ``save_pretrained`` /
``push_to_hub`` share it.

A saved folder (``format_version`` 1)::

    FOLDER/hypergen_config.json       {"format": "hypergen.hypernetwork", "format_version": 1, "hypergen_version",
                                       "method", "peft", "main_model": {"name_or_path": hub id or "main_model"
                                       (the copy in the folder), "copied": bool, "shape": {the family's fields}},
                                       "evaluation": held-out scores, demos control and gap (see model_card.py)}
    FOLDER/recipe.json                the resolved recipe the run was trained with
    FOLDER/hypernetwork.safetensors   the hypernetwork's weights
    FOLDER/tokenizer/                 the main model's tokenizer
    FOLDER/main_model/                a copy of the main model (tiny, or a local folder), unless it has a hub id
    FOLDER/README.md                  the model card
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..version import __version__
from ..recipe.builtin import method_label
from ..data.tasks import Task
from ..errors import HypergenError
from .hub import check_repo_id, looks_like_repo_id, require_hub, snapshot, upload_folder
from ..folders import FolderKind, prepare_output_dir, staged_folder
from ..io import atomic_save_tensors, atomic_write_json, atomic_write_text, read_json_object
from .model_card import evaluation_of_run, model_card
from ..adapters.task import TaskAdapter

FORMAT = "hypergen.hypernetwork"
FORMAT_VERSION = 1
CONFIG = "hypergen_config.json"
WEIGHTS = "hypernetwork.safetensors"
MAIN_MODEL_DIR = "main_model"
TOKENIZER_DIR = "tokenizer"
# hypergen_config.json marks a saved folder; overwrite=True replaces only these entries, nothing else in the folder
SAVED_FOLDER = FolderKind("saved hypernetwork", CONFIG, frozenset({CONFIG, WEIGHTS, "recipe.json", "README.md",
                                                                  MAIN_MODEL_DIR, TOKENIZER_DIR}))


def main_model_shape(config) -> dict[str, int]:
    """The config fields a saved hypernetwork checks its main model by: its family's ``shape_fields`` (T5: layers,
    widths, heads; a Llama: num_hidden_layers, num_key_value_heads, head_dim, hidden_size; all: vocab_size)."""
    from ..models.families import family_of

    return family_of(config).config_shape(config)


class PretrainedHyperNetwork:
    """A trained hypernetwork with its frozen main model, PEFT target and tokenizer (``hypergen.HyperNetwork``)."""

    def __init__(self, assembled, evaluation: dict[str, Any] | None = None, run_dir: Path | None = None,
                 source: str | None = None) -> None:
        self.assembled = assembled
        self.evaluation = evaluation
        self.run_dir = run_dir
        self.source = source

    def __repr__(self) -> str:
        return f"HyperNetwork({method_label(self.recipe_dict)}, source={self.source!r})"

    # -- what it is ----------------------------------------------------------------------------------------------
    @property
    def recipe(self):
        return self.assembled.recipe

    @property
    def recipe_dict(self) -> dict[str, Any]:
        return json.loads(self.recipe.model_dump_json())

    @property
    def module(self) -> torch.nn.Module:
        """The trained hypernetwork (:class:`hypergen.models.hypernet.HyperNetwork`)."""
        return self.assembled.method.module

    @property
    def main_model(self) -> torch.nn.Module:
        return self.assembled.method.main_model

    @property
    def tokenizer(self):
        return self.assembled.tokenizer

    @property
    def device(self) -> torch.device:
        return self.assembled.device

    # -- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None,
                        cache_dir: str | Path | None = None, main_model: str | None = None,
                        device: str | torch.device | None = None, token: str | None = None) -> "PretrainedHyperNetwork":
        """Load a run folder (``hypergen train``'s output), a folder written by :meth:`save_pretrained`, or a hub
        repo id (``owner/name``, at ``revision``; the local cache first, and where the hub cannot be reached one
        line at once). ``main_model``: another folder or hub id for the main model (e.g. a local copy of the one
        the hypernetwork names); its shapes must be those it was trained on. ``device``: default the recipe's."""
        from ..runs.devices import resolve_device

        device = resolve_device(str(device), "device") if device is not None else None
        path = Path(name_or_path).expanduser()
        if not path.exists():
            if not looks_like_repo_id(str(name_or_path)):
                raise HypergenError(f"from_pretrained: {name_or_path} is neither a folder nor a hub repo id "
                                    "('owner/name')")
            path = snapshot(str(name_or_path), revision, cache_dir, token)
            if not (path / CONFIG).is_file():
                raise HypergenError(f"from_pretrained: hub repo {name_or_path!r} has no {CONFIG}; not a hypernetwork "
                                    "saved with hypergen")
        elif not path.is_dir():
            raise HypergenError(f"from_pretrained: {path} is a file; expected a run folder or a saved folder")
        if (path / CONFIG).is_file():
            return cls._from_saved(path, main_model, device, str(name_or_path))
        if (path / "recipe.json").is_file():
            return cls._from_run(path, main_model, device)
        raise HypergenError(f"from_pretrained: {path} holds neither {CONFIG} (a saved hypernetwork) nor recipe.json "
                            "(a run folder)")

    @classmethod
    def _from_run(cls, run_dir: Path, main_model: str | None, device) -> "PretrainedHyperNetwork":
        from ..recipe import FinetuneRecipe
        from ..runs.folder import read_run

        recipe = read_run(run_dir)
        if isinstance(recipe, FinetuneRecipe):
            raise HypergenError(f"from_pretrained: {run_dir} is a finetune run (kind 'finetune'), not a hypernetwork")
        weights = run_dir / WEIGHTS
        if not weights.is_file():
            raise HypergenError(f"{weights}: not found; did training finish?")
        if main_model is not None:
            recipe = _with_main_model(recipe, main_model)
        assembled = _assemble_with_weights(recipe, weights, device, where=str(run_dir / "recipe.json"))
        return cls(assembled, evaluation_of_run(run_dir), run_dir=run_dir.resolve(), source=str(run_dir))

    @classmethod
    def _from_saved(cls, folder: Path, main_model: str | None, device, source: str) -> "PretrainedHyperNetwork":
        from transformers import AutoConfig, AutoTokenizer

        from ..models.main import check_model_available, resolve_main_model_path
        from ..recipe import parse_recipe
        from ..runs.folder import legacy_prompt

        config_file = folder / CONFIG
        config = read_json_object(config_file)
        if config.get("format") != FORMAT:
            raise HypergenError(f"{config_file}: format is {config.get('format')!r}; expected {FORMAT!r}")
        version = config.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise HypergenError(f"{config_file}: format_version {version!r}; this hypergen ({__version__}) reads "
                                f"format versions 1..{FORMAT_VERSION} (written by a newer hypergen?)")
        recipe = parse_recipe(legacy_prompt(read_json_object(folder / "recipe.json")), str(folder / "recipe.json"))
        stored = config.get("main_model", {})
        name = main_model or (str(folder / MAIN_MODEL_DIR) if stored.get("copied") else stored.get("name_or_path"))
        if not name:
            raise HypergenError(f"{config_file}: main_model.name_or_path is not set; pass main_model=...")
        where = "main_model" if main_model else f"{config_file}: main_model.name_or_path"
        check_model_available(name, where)
        shape = main_model_shape(AutoConfig.from_pretrained(resolve_main_model_path(name, where)))
        for key, want in (stored.get("shape") or {}).items():
            if shape.get(key) != want:
                raise HypergenError(f"{config_file}: trained for a main model with {key}={want}, but {name} has "
                                    f"{key}={shape.get(key)}")
        assembled = _assemble_with_weights(_with_main_model(recipe, name), folder / WEIGHTS, device,
                                           where=str(config_file))
        tokenizer_dir = folder / TOKENIZER_DIR
        if tokenizer_dir.is_dir():
            from ..data.collate import Collator

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
            collator = Collator(tokenizer, assembled.recipe.data, causal=assembled.collator.causal)
            assembled.tokenizer, assembled.collator = tokenizer, collator
        return cls(assembled, config.get("evaluation"), source=source)

    # -- adapting ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def adapt(self, demos, definition: str | None = None, name: str = "demos"):
        """Generate PEFT parameters from demos, in one hypernetwork pass.

        ``demos``: one demo set, as a list of ``{"input": text, "output": text or [texts]}`` (plus at most one
        ``{"definition": text}``, or ``definition=``), a path to a demos JSONL file or an S-NI task file, or a
        :class:`~hypergen.data.tasks.Task`: returns one :class:`TaskAdapter`. A list of demo sets (lists, paths
        or tasks): returns a list of adapters, all generated in one pass (the demos padded to a batch)."""
        many = isinstance(demos, (list, tuple)) and bool(demos) and not all(isinstance(d, dict) for d in demos)
        if many:
            if definition is not None:
                raise HypergenError("adapt: definition= applies to one demo set; put {'definition': ...} items in "
                                    "each set instead")
            tasks = [_as_task(d, f"demos[{i}]", f"{name}-{i}", None) for i, d in enumerate(demos)]
        else:
            tasks = [_as_task(demos, "demos", name, definition)]
        method, collator = self.assembled.method, self.assembled.collator
        method.eval()
        ids, mask = collator.encode_demos(tasks)
        generated = method.module(ids.to(self.device), mask.to(self.device)).detach()  # T tasks
        adapters = [TaskAdapter(self.assembled, task, _one_task(generated, i), self.run_dir)
                    for i, task in enumerate(tasks)]
        return adapters if many else adapters[0]

    # -- sharing -------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, overwrite: bool = False,
                        copy_main_model: bool | None = None) -> Path:
        """Write a self-describing folder (see the module docstring), atomically. ``copy_main_model``: copy the
        main model into the folder (default: unless it is named by a hub id or a packaged model's name, i.e. tiny
        or a local folder or GGUF file)."""
        from ..models.main import save_main_model
        from ..models.packaged import is_packaged_name

        folder = prepare_output_dir(Path(folder), SAVED_FOLDER, overwrite, "save_pretrained")
        recipe = self.recipe_dict
        spec = self.recipe.main_model
        hub_id = spec.tiny is None and (is_packaged_name(spec.name_or_path) or (  # a name, not a path
            looks_like_repo_id(spec.name_or_path) and not Path(spec.name_or_path).exists()))
        copied = (not hub_id) if copy_main_model is None else copy_main_model
        if not copied and spec.tiny is not None:
            raise HypergenError("save_pretrained: a tiny main model has no name to point at; copy_main_model must "
                                "not be False")
        name = MAIN_MODEL_DIR if copied else (spec.name_or_path if hub_id else str(Path(spec.name_or_path).resolve()))
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "hypergen_version": __version__,
                  "method": method_label(recipe), "peft": recipe["peft"],
                  "main_model": {"name_or_path": name, "copied": copied,
                                 "shape": main_model_shape(self.main_model.config)},
                  "evaluation": self.evaluation}
        with staged_folder(folder, SAVED_FOLDER) as tmp:
            atomic_save_tensors(tmp / WEIGHTS, self.module.state_dict())
            atomic_write_json(tmp / "recipe.json", recipe)
            atomic_write_json(tmp / CONFIG, config)
            self.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
            if copied:
                save_main_model(self.main_model, self.tokenizer, tmp / MAIN_MODEL_DIR)
            atomic_write_text(tmp / "README.md", model_card(recipe, folder.name, name, self.evaluation, not copied))
        return folder

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload hypernetwork with hypergen",
                    copy_main_model: bool | None = None) -> str:
        """:meth:`save_pretrained` into a temporary folder, then upload it to the hub repo ``repo_id`` (created if
        needed) as one commit; returns the commit URL. Where the hub cannot be reached: one line, nothing saved."""
        check_repo_id(repo_id, "push_to_hub")
        require_hub("push_to_hub", "nothing was saved or uploaded")  # before writing anything
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1], copy_main_model=copy_main_model)
            return upload_folder(folder, repo_id, private, token, commit_message)


def _one_task(generated, index: int):
    """Task ``index`` of a pass over T tasks, as a batch of one, its demos' padding trimmed (so that it equals a pass
    over that task alone): params {group: 1 x L x rows x width}, encoder states 1 x n_i x d_h, mask 1 x n_i."""
    from ..models.hypernet import TaskParameters

    mask = generated.encoder_mask[index]
    length = int(mask.nonzero().max()) + 1 if bool(mask.any()) else mask.shape[0]
    return TaskParameters({k: v[index:index + 1] for k, v in generated.params.items()},
                          generated.encoder_states[index:index + 1, :length], mask[None, :length], None,
                          fusion_gate=generated.fusion_gate)


def _as_task(demos, where: str, name: str, definition: str | None) -> Task:
    from ..data.jsonl import read_demos_file
    from ..data.demos import task_from_demos
    from ..data.tasks import load_task

    if isinstance(demos, Task):
        return demos
    if isinstance(demos, (str, Path)):
        path = Path(demos)
        if not path.is_file():
            raise HypergenError(f"{where}: {path} is not a file")
        return read_demos_file(path) if path.suffix == ".jsonl" else load_task(path)
    if isinstance(demos, (list, tuple)):
        if not demos:
            raise HypergenError(f"{where}: no demonstration pairs (an empty list)")
        return task_from_demos(((f"item {i}", d) for i, d in enumerate(demos)), where, name, definition)
    raise HypergenError(f"{where}: expected a list of {{'input', 'output'}} dicts, a file path or a Task, got "
                        f"{type(demos).__name__}")


def _with_main_model(recipe, name_or_path: str):
    spec = recipe.main_model.model_copy(update={"name_or_path": name_or_path, "tiny": None})
    return recipe.model_copy(update={"main_model": spec})


def _assemble_with_weights(recipe, weights: Path, device, where: str):
    from ..runs.assembly import assemble

    assembled = assemble(recipe, device)
    try:
        state = load_file(str(weights), device=str(assembled.device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise HypergenError(f"{weights}: cannot read safetensors ({exc})") from None
    missing, unexpected = assembled.method.module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise HypergenError(f"{weights}: does not fit the hypernetwork {where} describes (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    return assembled
