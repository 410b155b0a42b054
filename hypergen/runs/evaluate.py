"""Scoring a run: its held-out test tasks (or its validation split, or the test tasks under a demos control) into
``RUN/eval/`` (``RUN/validation/``, ``RUN/eval-control-<name>/``), and the score tables the commands print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data.collate import Collator
from ..data.controls import CONTROLS, DemoControl, control_dir
from ..data.tasks import with_demos_of_other_tasks
from ..errors import HypergenError
from ..evaluation.evaluate import evaluate
from ..io import atomic_write_json, atomic_write_text
from .folder import load_final, read_run
from .tasks import load_tasks


def evaluate_assembled(assembled, tasks, run_dir: Path, max_instances: int, progress: bool = True,
                       out_name: str = "eval") -> dict[str, Any]:
    scores, records = evaluate(assembled.method, tasks, assembled.collator, assembled.device, max_instances,
                               assembled.recipe.evaluation.batch_size, progress=progress)
    out = Path(run_dir) / out_name
    atomic_write_json(out / "scores.json", scores)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return scores


def evaluate_run(run_dir: str, data: str | None = None, split_file: str | None = None,
                 max_instances: int | None = None, progress: bool = True, other_demos: bool = False,
                 device: torch.device | None = None, split: str = "test", control: str | None = None) -> dict[str, Any]:
    """Evaluate a trained run on its held-out test tasks into ``RUN/eval/``, or (``split="validation"``) on its
    validation tasks into ``RUN/validation/``; under a demos ``control`` (:mod:`.data.controls`: "other", "random",
    "none"; ``other_demos`` is "other") every test task's demos are replaced, into ``RUN/eval-control-<name>/``."""
    run = Path(run_dir)
    control = check_control(control, other_demos)
    if control and split != "test":
        raise HypergenError("--control: the demos controls evaluate the test tasks only")
    recipe = read_run(run)
    tasks = load_tasks(recipe, split, data_path=data, split_file=split_file)
    if control == "other":
        if recipe.data.source == "p3":
            raise HypergenError("--control other: not available for P3 runs (their held-out demos are drawn per "
                                "subset)")
        if len(tasks) < 2:
            raise HypergenError(f"--control other: needs at least two held-out tasks, {run} has {len(tasks)}")
        tasks = with_demos_of_other_tasks(tasks)
    assembled = load_final(run, device)
    if control in ("random", "none"):
        assembled.collator = Collator(assembled.tokenizer, recipe.data, causal=assembled.collator.causal,
                                      control=DemoControl(control, assembled.tokenizer))
    return evaluate_assembled(assembled, tasks, run, max_instances or recipe.data.eval_instances_per_task, progress,
                              out_name=control_dir(control) if control else SPLIT_DIRS[split])


def check_control(control: str | None, other_demos: bool = False) -> str | None:
    """The control ``hypergen eval`` runs: ``control`` ("other", "random", "none" or None), ``other_demos`` being
    an alias of "other"; anything else is a one-line error."""
    if control is not None and control not in CONTROLS:
        raise HypergenError(f"--control: {control!r} is not a demos control; expected one of {', '.join(CONTROLS)}")
    if other_demos and control not in (None, "other"):
        raise HypergenError(f"--other-demos is --control other; it cannot be combined with --control {control}")
    return "other" if other_demos else control


SPLIT_DIRS = {"test": "eval", "validation": "validation"}  # where evaluate_run writes each split's scores


def format_scores(scores: dict[str, Any], per_task: bool = True) -> str:
    if "accuracy" in scores["overall"]:  # rank classification (P3)
        lines = [f"{'task':<48} {'accuracy':>9}"]
        lines += [f"{name:<48} {value:>9.2f}" for name, value in scores["per_group"].items()] if per_task else []
        lines.append(f"{'overall (mean over tasks)':<48} {scores['overall']['accuracy']:>9.2f}")
        return "\n".join(lines)
    lines = []
    if per_task:
        lines.append(f"{'task':<48} {'EM':>7} {'ROUGE-L':>8} {'n':>5}")
        for task, s in scores["per_task"].items():
            lines.append(f"{task:<48} {s['exact_match']:>7.2f} {s['rougeL']:>8.2f} {s['instances']:>5}")
    o = scores["overall"]
    lines.append(f"{'overall':<48} {o['exact_match']:>7.2f} {o['rougeL']:>8.2f} {o['instances']:>5}")
    return "\n".join(lines)
