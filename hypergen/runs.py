"""Assemble a run from a recipe (data, main model, components, method) and the run folder's files.

A run folder::

    RUN/hypergen-run.json            the marker: this folder is a hypergen run (see hypergen/folders.py)
    RUN/.hypergen.lock               locked while a process trains the run
    RUN/recipe.json                  the resolved recipe
    RUN/metrics.jsonl                one JSON line per logged step
    RUN/run_info.json                what ran: the optimizer's class and the training backend
    RUN/checkpoints/step-*/          see training/checkpoint.py
    RUN/hypernetwork.safetensors     final hypernetwork weights (hypernetwork and pretrain recipes)
    RUN/pretrain_data.json           pretrain recipes: texts drawn, used and skipped (hypergen/pretraining.py)
    RUN/model/                       final main model, a Hugging Face folder (finetune recipes)
    RUN/eval/scores.json, predictions.jsonl
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .components.build import make_component
from .data.chat import stop_at_end_of_turn
from .data.collate import Collator
from .data.controls import CONTROLS, LEGACY_OTHER_DEMOS_DIR, control_dir
from .data.pretraining import PretrainCollator
from .data.p3 import T0_HELD_OUT, T0_TRAIN_DATASETS, load_p3
from .data.splits import as_evaluation_task, hold_out_validation
from .data.synthetic import ensure_embedded_tasks
from .data.tasks import Task, load_task_folder
from .errors import HypergenError, RecipeError
from .folders import FolderKind, FolderLock, check_output_dir, clear_output_dir
from .io import atomic_save_tensors, atomic_write_json, check_tensors_fit, read_json, read_safetensors, writing
from .models.backbones import is_causal
from .models.hypernet import HyperNetwork
from .models.main import DTYPES, load_main_model
from .recipe import FinetuneRecipe, HypernetRecipe, PretrainRecipe, Recipe, parse_recipe
from .training.methods import FinetuneMethod, HypernetMethod

EMBEDDED_DIR = Path(".cache/hypergen/embedded")


def resolve_device(name: str, where: str = "training.device") -> torch.device:
    """"auto" (CUDA when there is one), "cpu" or "cuda"; ``where`` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HypergenError(f"{where}: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def data_folder(recipe: Recipe) -> Path:
    data = recipe.data
    if data.source == "embedded":
        return ensure_embedded_tasks(Path(data.path) if data.path else EMBEDDED_DIR, seed=data.embedded_seed)
    path = Path(data.path).expanduser()
    if not path.exists():
        raise HypergenError(f"data.path: {path} does not exist")
    return path


def load_tasks(recipe: Recipe, split: str, data_path: str | None = None, split_file: str | None = None,
               tokenizer=None) -> list[Task]:
    """The recipe's ``split`` tasks: "train" (the training split less the validation tasks), "validation" (held back
    from the training split by ``data.validation_tasks``, see :mod:`.data.splits`) or "test"; S-NI or embedded task
    folders, or P3 subsets. ``split_file`` replaces the test split's file list."""
    if split == "test":
        return _load_split(recipe, "test", data_path, split_file, tokenizer)
    train, validation = training_and_validation(recipe, data_path, tokenizer)
    if split == "train":
        return train
    if not validation:
        raise HypergenError("data.validation_tasks: not set; the recipe has no validation split (set a fraction of "
                            "the training tasks or their names)")
    return validation


def training_and_validation(recipe: Recipe, data_path: str | None = None,
                            tokenizer=None) -> tuple[list[Task], list[Task]]:
    """(tasks to train on, validation tasks): the training split, less and then only ``data.validation_tasks``
    (no validation tasks when it is not set). P3 validation subsets get fixed demos, and must have answer choices."""
    tasks = _load_split(recipe, "train", data_path, None, tokenizer)
    setting, p3 = recipe.data.validation_tasks, recipe.data.source == "p3"
    if setting is None:
        return tasks, []
    test_names: set[str] = set()
    if isinstance(setting, list) and not set(setting) <= {t.name for t in tasks}:  # say which are test tasks
        test_names = {t.name for t in _load_split(recipe, "test", data_path, None, tokenizer)}
    eligible = {t.name for t in tasks if all(e.choices for e in t.instances)} if p3 else None
    train, validation = hold_out_validation(tasks, setting, recipe.data.validation_seed, test_names, eligible)
    if p3:
        validation = [as_evaluation_task(t, recipe.data.num_positive) for t in validation]
    return train, validation


def _load_split(recipe: Recipe, split: str, data_path: str | None, split_file: str | None, tokenizer) -> list[Task]:
    if recipe.data.source == "p3":
        return load_p3_tasks(recipe, split, data_path, tokenizer)
    folder = Path(data_path) if data_path else data_folder(recipe)
    if not folder.exists():
        raise HypergenError(f"--data: {folder} does not exist")
    default_file = recipe.data.train_split_file if split == "train" else recipe.data.test_split_file
    tasks = load_task_folder(folder, split=split, split_name=recipe.data.split, split_file=split_file or default_file)
    if not tasks:
        raise HypergenError(f"{folder}: no {split} tasks found")
    return tasks


def load_p3_tasks(recipe: Recipe, split: str, data_path: str | None, tokenizer) -> list[Task]:
    data = recipe.data
    root = data_path or data.path
    if split == "train":
        count = (lambda text: len(tokenizer(text).input_ids)) if tokenizer is not None else (lambda t: len(t.split()))
        return load_p3(root, data.p3_train_datasets or T0_TRAIN_DATASETS, "train",
                       max_avg_input_tokens=data.p3_max_avg_input_tokens, count_tokens=count)
    return load_p3(root, data.p3_eval_datasets or T0_HELD_OUT.values(), "validation", shots=data.num_positive,
                   max_instances=data.eval_instances_per_task)


@dataclass
class Assembled:
    recipe: Recipe
    method: Any
    tokenizer: Any
    collator: Collator | PretrainCollator
    device: torch.device


def assemble(recipe: Recipe, device: torch.device | None = None) -> Assembled:
    """Build the method a recipe describes (main model loaded and frozen; hypernetwork built from it)."""
    device = device or resolve_device(recipe.training.device)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    if isinstance(recipe, FinetuneRecipe):
        main_model, tokenizer = load_main_model(recipe.main_model, device)
        method = FinetuneMethod(main_model, recipe.few_shot, recipe.evaluation, recipe.train_demos_fraction)
    else:  # in fp32 on the CPU first: the hypernetwork starts from the full-precision weights
        main_model, tokenizer = load_main_model(recipe.main_model, "cpu", dtype=torch.float32)
        method = build_hypernet_method(recipe, main_model, device)
    collator = (PretrainCollator(tokenizer) if isinstance(recipe, PretrainRecipe)
                else Collator(tokenizer, recipe.data, causal=is_causal(main_model)))
    stop_at_end_of_turn(main_model, collator)  # a chat prompt's answers end with the template's end-of-turn token
    return Assembled(recipe, method, tokenizer, collator, device)


def build_hypernet_method(recipe: HypernetRecipe, main_model, device) -> HypernetMethod:
    """``main_model`` in fp32: the hypernetwork copies its weights, then it goes to ``device`` in
    ``main_model.dtype`` (bf16 there rounds the frozen model only, never the hypernetwork's starting point)."""
    hyper = recipe.hypernetwork
    target = make_component("peft_targets", recipe.peft, "peft")
    generator = make_component("generators", hyper.generator, "hypernetwork.generator")
    projector = make_component("projectors", hyper.projector, "hypernetwork.projector")
    regularizers = [make_component("regularizers", spec, f"hypernetwork.regularizers.{i}")
                    for i, spec in enumerate(hyper.regularizers)]
    groups = target.slot_groups(main_model)
    check_target_generates(recipe, groups)
    try:
        torch.manual_seed(recipe.training.seed)
        hypernet = HyperNetwork(main_model, generator, projector, groups, hyper.decoder_layers, hyper.init_from_main,
                                fusion_gate=hyper.fusion_in_decoder and is_causal(main_model))
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    except RecipeError as exc:
        message = str(exc)
        if message.startswith(("projector:", "generator:")):
            message = f"hypernetwork.{message}"
        raise RecipeError(message) from None
    main_model.to(device=device, dtype=DTYPES[recipe.main_model.dtype])
    if hyper.fusion_in_decoder and not generator.reads_demos:
        raise RecipeError(f"hypernetwork.fusion_in_decoder: the generator {hyper.generator.name!r} reads no demos, "
                          "so there are no encoded demos to fuse; set it to false")
    if hyper.fusion_in_decoder and not hypernet.backbone.supports_fusion:
        raise RecipeError(f"hypernetwork.fusion_in_decoder: {type(main_model).__name__} has no cross-attention to fuse "
                          "the demos into; set it to false")
    target.prepare(main_model)
    return HypernetMethod(main_model, hypernet.to(device), target, regularizers, hyper.fusion_in_decoder,
                          recipe.evaluation, recipe.data.demos_in_input)


def check_target_generates(recipe: HypernetRecipe, groups) -> None:
    """Refuse a PEFT target that gives the hypernetwork nothing to generate.

    A prefix of length 0 (or LoRA of rank 0), or one with encoder and decoder both off, leaves the main model
    unchanged: training would fit nothing. The target classes accept it (a zero-length prefix is a no-op), but a
    hypernetwork recipe needs at least one generated row."""
    if any(g.rows > 0 and g.num_layers > 0 and g.width > 0 for g in groups):
        return
    params = recipe.peft.params
    for key in ("length", "rank", "r"):
        if params.get(key) == 0:
            raise RecipeError(f"peft.{key}: 0 leaves the hypernetwork nothing to generate; expected an integer >= 1")
    sides = [k for k in ("encoder", "decoder") if params.get(k) is False]
    if len(sides) == 2:
        raise RecipeError("peft.encoder, peft.decoder: both false leaves the hypernetwork nothing to generate; "
                          "expected at least one of them true")
    raise RecipeError(f"peft: {recipe.peft.name!r} with {params} gives the hypernetwork nothing to generate")


RUN_MARKER = "hypergen-run.json"
RUN_FOLDER = FolderKind(
    "run", RUN_MARKER,
    frozenset({RUN_MARKER, "recipe.json", "metrics.jsonl", "checkpoints", "hypernetwork.safetensors", "model",
               "eval", LEGACY_OTHER_DEMOS_DIR, *map(control_dir, CONTROLS), "plots", "pretrain_data.json"}),
    legacy=(("recipe.json", "metrics.jsonl"), ("recipe.json", "checkpoints")))


def prepare_run_dir(run_dir: Path, recipe_data: dict[str, Any], resume: bool, overwrite: bool) -> FolderLock:
    """Claim ``run_dir`` for training and return its lock (held until released or the process ends).

    A folder that is neither new, empty nor a hypergen run is refused (see hypergen/folders.py); an existing run
    needs ``resume`` (same recipe) or ``overwrite`` (which deletes only what hypergen wrote there)."""
    run_dir = Path(run_dir)
    holds_run = check_output_dir(run_dir, RUN_FOLDER, "--output")
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(run_dir)
    try:
        recipe_file = run_dir / "recipe.json"
        if holds_run and recipe_file.exists() and not overwrite:
            if not resume:
                raise HypergenError(f"{run_dir}: already holds a run; pass --resume to continue it or --overwrite")
            if not same_recipe(recipe_file, recipe_data):
                raise HypergenError(f"{run_dir}: holds a run of a different recipe; --resume needs the same recipe")
        if overwrite and holds_run:
            clear_output_dir(run_dir, RUN_FOLDER)
        atomic_write_json(run_dir / RUN_MARKER, {"hypergen": "run"})
        atomic_write_json(recipe_file, recipe_data)
    except BaseException:
        lock.release()
        raise
    return lock


def same_recipe(recipe_file: Path, recipe_data: dict[str, Any]) -> bool:
    """Whether a run's saved ``recipe.json`` is the resolved ``recipe_data``, read through today's recipe models
    (so that a setting added since the run was written, at its default, does not make it "another recipe")."""
    saved = read_json(recipe_file, "run recipe")
    if saved == recipe_data:
        return True
    try:
        return json.loads(parse_recipe(saved, str(recipe_file)).model_dump_json()) == recipe_data
    except RecipeError:
        return False


def finished_run(run_dir: Path, recipe_data: dict[str, Any]) -> Path | None:
    """The final weights of ``run_dir`` when it is a finished run of this recipe (what ``--resume`` would
    retrain), else None. Refuses a folder that is not a run (:func:`check_output_dir`), reading nothing else."""
    run_dir = Path(run_dir)
    if not check_output_dir(run_dir, RUN_FOLDER, "--output") or not (run_dir / "recipe.json").is_file():
        return None
    if not same_recipe(run_dir / "recipe.json", recipe_data):
        return None
    for final in (run_dir / "hypernetwork.safetensors", run_dir / "model" / "config.json"):
        if final.is_file():
            return final
    return None


def read_run(run_dir: Path) -> Recipe:
    recipe_file = Path(run_dir) / "recipe.json"
    if not recipe_file.is_file():
        raise HypergenError(f"{run_dir}: not a run folder (no recipe.json)")
    return parse_recipe(legacy_prompt(read_json(recipe_file, "run recipe")), str(recipe_file))


def legacy_prompt(data: Any) -> Any:
    """A run's saved recipe (``recipe.json``, every field resolved) written before ``data.prompt`` existed: its
    main model read plain prompts, so it still does (where "auto" would now pick a chat template)."""
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "prompt" not in data["data"]:
        return {**data, "data": {**data["data"], "prompt": "plain"}}
    return data


def save_final(run_dir: Path, assembled: Assembled) -> None:
    method = assembled.method
    if isinstance(method, FinetuneMethod):
        from .models.main import save_main_model

        tmp = run_dir / ".model.tmp"
        with writing(run_dir / "model"):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                save_main_model(method.module, assembled.tokenizer, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(run_dir / "model", ignore_errors=True)
            tmp.rename(run_dir / "model")
    else:
        from .training.trainer import nonfinite_tensors

        state = method.module.state_dict()
        bad = nonfinite_tensors(state)
        if bad:
            raise HypergenError(f"{run_dir}: final weights {', '.join(bad[:3])} hold NaN or infinite values; "
                                "not writing hypernetwork.safetensors")
        atomic_save_tensors(run_dir / "hypernetwork.safetensors", state)


def load_final(run_dir: Path, device: torch.device | None = None) -> Assembled:
    """Rebuild a trained run for evaluation: the recipe, then the final weights."""
    recipe = read_run(run_dir)
    if isinstance(recipe, PretrainRecipe):
        raise HypergenError(f"{run_dir}: a pretrain run (HyperTuning-PT's first stage) has no task to be evaluated or "
                            "adapted on; fine-tune it first: a hypernetwork recipe with --set "
                            f"hypernetwork.init_from={run_dir}")
    if isinstance(recipe, FinetuneRecipe):
        model_dir = Path(run_dir) / "model"
        if not (model_dir / "config.json").is_file():
            raise HypergenError(f"{run_dir}: no trained model (model/ is missing); did training finish?")
        recipe = recipe.model_copy(update={"main_model": recipe.main_model.model_copy(
            update={"name_or_path": str(model_dir), "tiny": None})})
        return assemble(recipe, device)
    weights = Path(run_dir) / "hypernetwork.safetensors"
    if not weights.is_file():
        raise HypergenError(f"{run_dir}: no hypernetwork.safetensors; did training finish?")
    assembled = assemble(recipe, device)
    state = read_safetensors(weights, "final hypernetwork weights", device=str(assembled.device))
    module = assembled.method.module
    check_tensors_fit(weights, module.state_dict(), state)
    module.load_state_dict(state)
    return assembled

