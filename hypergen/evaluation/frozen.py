"""The frozen main model's baselines (``hypergen eval --frozen MODE``): the recipe's main model alone, no
hypernetwork, on the held-out tasks, scored by the same evaluator as a run. Modes, what the model reads::

    zero_shot     the query alone
    instruction   the task definition, then the query
    in_context    the definition and the task's first two positive examples (Def+2Pos, what a user would do
                  without hypergen), then the query

The definition and examples are the recipe's demo style (:func:`~hypergen.data.format.demos_text`), put before
the query as a few-shot input (demos + separator + query) in the recipe's prompt (``data.prompt``). The scores go
to a folder that ``hypergen compare`` lists beside trained runs::

    DIR/frozen.json                   the marker: mode, source recipe or run, main model, prompt, time taken
    DIR/recipe.json                   the resolved recipe the baseline was drawn from
    DIR/eval/scores.json, predictions.jsonl
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..data.chat import stop_at_end_of_turn
from ..data.collate import Collator
from ..errors import HypergenError
from ..folders import FolderKind, check_output_dir
from ..io import atomic_write_json, atomic_write_text
from ..models.backbones import is_causal
from ..models.main import check_model_available, load_main_model
from ..runs.tasks import load_tasks
from ..runs.devices import resolve_device
from ..training.methods import FinetuneMethod
from ..version import __version__
from .evaluate import evaluate

FROZEN_MODES = ("zero_shot", "instruction", "in_context")
FROZEN_MARKER = "frozen.json"
FROZEN_FOLDER = FolderKind("frozen-baseline", FROZEN_MARKER, frozenset({FROZEN_MARKER, "recipe.json", "eval"}))
IN_CONTEXT_POSITIVES = 2  # Def+2Pos


def check_mode(mode: str) -> str:
    if mode not in FROZEN_MODES:
        raise HypergenError(f"--frozen: {mode!r} is not a frozen baseline; expected one of {', '.join(FROZEN_MODES)}")
    return mode


def frozen_data(data, mode: str):
    """``(data settings, demos in the input)`` of ``mode``: the recipe's ``data`` with the demos of the mode."""
    check_mode(mode)
    if mode == "zero_shot":
        return data, False
    positives = 0 if mode == "instruction" else IN_CONTEXT_POSITIVES
    return data.model_copy(update={"num_positive": positives, "include_definition": True}), True


def default_output(mode: str, recipe_path: str | None = None, run_dir: str | None = None) -> Path:
    """``runs/frozen-<recipe name>-<mode>``, or beside a run: ``<its parent>/frozen-<run name>-<mode>``."""
    if run_dir is not None:
        run = Path(run_dir)
        return run.resolve().parent / f"frozen-{run.resolve().name}-{mode}"
    return Path("runs") / f"frozen-{Path(recipe_path).stem}-{mode}"


def frozen_collator(tokenizer, main_model, data, mode: str) -> tuple[Collator, bool]:
    """The collator of ``mode`` (see :func:`frozen_data`) and whether the demos go in the input."""
    data_cfg, demos_in_input = frozen_data(data, mode)
    return Collator(tokenizer, data_cfg, causal=is_causal(main_model)), demos_in_input


def evaluate_frozen(recipe, mode: str, output: str | Path, source: dict[str, str], data_path: str | None = None,
                    split_file: str | None = None, max_instances: int | None = None, progress: bool = True,
                    device: torch.device | None = None) -> dict[str, Any]:
    """Score ``recipe``'s main model alone in ``mode`` on the test tasks into ``output`` (see the module); returns
    the scores. ``source``: where the recipe came from (``{"recipe": path}`` or ``{"run": folder}``)."""
    check_mode(mode)
    output = Path(output)
    check_output_dir(output, FROZEN_FOLDER, "--output")  # a foreign folder is refused before anything is loaded
    if recipe.main_model.name_or_path:
        check_model_available(recipe.main_model.name_or_path)
    tasks = load_tasks(recipe, "test", data_path=data_path, split_file=split_file)
    device = device or resolve_device(recipe.training.device)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    main_model, tokenizer = load_main_model(recipe.main_model, device)
    collator, demos_in_input = frozen_collator(tokenizer, main_model, recipe.data, mode)
    stop_at_end_of_turn(main_model, collator)
    method = FinetuneMethod(main_model, few_shot=demos_in_input, eval_cfg=recipe.evaluation)
    main_model.requires_grad_(False)  # FinetuneMethod trains it; here it stays frozen
    method.eval()
    instances = max_instances or recipe.data.eval_instances_per_task
    start = time.perf_counter()
    with torch.no_grad():
        scores, records = evaluate(method, tasks, collator, device, instances, recipe.evaluation.batch_size,
                                   progress=progress)
    seconds = time.perf_counter() - start
    marker = {"hypergen": "frozen", "version": __version__, "mode": mode, **source,
              "main_model": recipe.main_model.model_dump(), "prompt": collator.prompt,
              "demos_in_input": demos_in_input, "data": data_path, "split_file": split_file,
              "max_instances_per_task": instances, "tasks": len(tasks), "seconds": round(seconds, 1)}
    atomic_write_json(output / FROZEN_MARKER, marker)
    atomic_write_json(output / "recipe.json", json.loads(recipe.model_dump_json()))
    atomic_write_text(output / "eval" / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(output / "eval" / "scores.json", scores)
    return scores
