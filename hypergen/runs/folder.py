"""A run folder's life cycle: prepared (new, resumed or overwritten, locked), recognised as finished, read back
(its recipe, its final weights), and a hypernetwork started from another run's weights (``init_from``).

A run folder::

    RUN/hypergen-run.json            the marker: this folder is a hypergen run (see hypergen/folders.py)
    RUN/.hypergen.lock               locked while a process trains the run
    RUN/recipe.json                  the resolved recipe
    RUN/metrics.jsonl                one JSON line per logged step
    RUN/run_info.json                what ran: the optimizer's class and the training backend
    RUN/checkpoints/step-*/          see training/checkpoint.py
    RUN/hypernetwork.safetensors     final hypernetwork weights (hypernetwork and pretrain recipes)
    RUN/pretrain_data.json           pretrain recipes: texts drawn, used and skipped (hypergen/pretraining/text.py)
    RUN/model/                       final main model, a Hugging Face folder (finetune recipes)
    RUN/eval/scores.json, predictions.jsonl
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..data.controls import CONTROLS, LEGACY_OTHER_DEMOS_DIR, control_dir
from ..errors import HypergenError, RecipeError
from ..folders import FolderKind, FolderLock, check_output_dir, clear_output_dir
from ..io import atomic_save_tensors, atomic_write_json, check_tensors_fit, read_json, read_safetensors, writing
from ..recipe import FinetuneRecipe, PretrainRecipe, Recipe, parse_recipe
from ..training.checkpoint import list_checkpoints, verify
from ..training.methods import FinetuneMethod
from .assembly import Assembled, assemble

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
        from ..models.main import save_main_model

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
        from ..training.trainer import nonfinite_tensors

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


def run_hypernet_weights(run: str | Path, where: str = "hypernetwork.init_from") -> tuple[Path, dict]:
    """(the file, the weights) of a run's hypernetwork: its final ``hypernetwork.safetensors``, else its latest
    checkpoint that verifies. One line naming ``where`` when ``run`` is not a hypergen run or holds neither."""
    folder = Path(run).expanduser()
    if not folder.is_dir():
        raise HypergenError(f"{where}: {folder} does not exist")
    if not RUN_FOLDER.recognises(folder):
        raise HypergenError(f"{where}: {folder} is not a hypergen run folder (no {RUN_FOLDER.marker})")
    final = folder / "hypernetwork.safetensors"
    if final.is_file():
        return final, read_safetensors(final, "final hypernetwork weights")
    if (folder / "model").is_dir():
        raise HypergenError(f"{where}: {folder} is a finetune run (a main model, no hypernetwork)")
    for checkpoint in reversed(list_checkpoints(folder)):
        if verify(checkpoint) is None:
            weights = checkpoint / "model.safetensors"
            return weights, read_safetensors(weights, "checkpoint weights")
    raise HypergenError(f"{where}: {folder} holds no hypernetwork weights yet (no hypernetwork.safetensors, no "
                        "valid checkpoint)")


def init_hypernet_from(module: torch.nn.Module, run: str | Path) -> Path:
    """Load ``run``'s hypernetwork weights into ``module`` (names and shapes must match, else one line naming the
    first parameter that does not); returns the file read."""
    path, state = run_hypernet_weights(run)
    try:
        check_tensors_fit(path, module.state_dict(), state)
    except HypergenError as exc:
        raise HypergenError(f"hypernetwork.init_from: {exc}") from None
    module.load_state_dict(state)
    return path
