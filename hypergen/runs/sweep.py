"""``hypergen sweep``: one run per point of a grid of recipe values, the best picked on the validation split.

The paper selects alpha from {1, 5, 10, 20}. A sweep trains the recipe once per grid point (the cartesian product
of the ``--grid KEY=V1,V2`` entries, each value applied as ``--set KEY=V`` would be) through the same
:func:`hypergen.runs.train.train` as ``hypergen train``, each into a normal run folder ``DIR/<point>/``, and scores
each on its validation tasks (``data.validation_tasks``, held back from the training tasks) into
``DIR/<point>/validation/``. It picks the point with the highest validation ROUGE-L (rank-classification accuracy
for P3; ties go to the earlier point in grid order), writes ``DIR/sweep.md`` and ``DIR/sweep.json``, and only then
evaluates the chosen run on the test tasks (``DIR/<point>/eval/``, copied to ``DIR/test/``). Every grid value is
checked before anything trains. Resumable: finished runs are read back, an interrupted one resumes from its last
checkpoint. One process (a sweep is not launched with torchrun).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import HypergenError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..recipe import HypernetRecipe, apply_overrides, parse_recipe, read_recipe_dict


@dataclass(frozen=True)
class Point:
    """One grid point: its ``--set`` overrides, its run folder's name and its resolved recipe."""

    values: dict[str, str]          # key -> value as given on the command line
    name: str                       # e.g. "alpha=5"
    resolved: dict[str, Any]

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]


@dataclass
class Sweep:
    recipe: str
    output: Path
    points: list[Point]
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[str]] = field(default_factory=dict)


def parse_grid(entries: list[str]) -> dict[str, list[str]]:
    """``["KEY=V1,V2", ...]`` -> {KEY: [V1, V2]}; commas inside brackets or quotes (a JSON list) do not split."""
    grid: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, raw = entry.partition("=")
        values = _split_values(raw)
        if not sep or not key.strip() or not values or any(not v.strip() for v in values):
            raise HypergenError(f"--grid {entry}: expected KEY.PATH=V1,V2,... with at least one value")
        if key in grid:
            raise HypergenError(f"--grid {entry}: {key} is given twice; list all its values in one --grid")
        if len(set(values)) < len(values):
            raise HypergenError(f"--grid {entry}: a value is repeated")
        grid[key.strip()] = [v.strip() for v in values]
    if not grid:
        raise HypergenError("--grid: give at least one KEY.PATH=V1,V2,... to sweep")
    return grid


def _split_values(raw: str) -> list[str]:
    values, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(raw):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            values.append(raw[start:i])
            start = i + 1
    return values + [raw[start:]] if raw else []


def _resolve(recipe_path: str, overrides: list[str], where: str) -> dict[str, Any]:
    """The recipe with ``overrides`` applied, validated like ``hypergen recipes validate`` (components built)."""
    from ..components.build import make_component

    try:
        data = apply_overrides(read_recipe_dict(recipe_path), overrides, where="override")
        recipe = parse_recipe(data, recipe_path)
        if isinstance(recipe, HypernetRecipe):
            make_component("peft_targets", recipe.peft, "peft")
            make_component("generators", recipe.hypernetwork.generator, "hypernetwork.generator")
            make_component("projectors", recipe.hypernetwork.projector, "hypernetwork.projector")
            for i, spec in enumerate(recipe.hypernetwork.regularizers):
                make_component("regularizers", spec, f"hypernetwork.regularizers.{i}")
    except HypergenError as exc:
        raise HypergenError(f"{where}: {exc}") from None
    return json.loads(recipe.model_dump_json())


def point_names(grid: dict[str, list[str]]) -> dict[str, str]:
    """A short, file-safe label per key: its last part (``alpha``), or the whole key where last parts clash."""
    last = {key: key.rsplit(".", 1)[-1] for key in grid}
    clash = {name for name in last.values() if list(last.values()).count(name) > 1}
    return {key: re.sub(r"[^A-Za-z0-9._-]", "_", key if last[key] in clash else last[key]) for key in grid}


def plan_sweep(recipe_path: str, grid_entries: list[str], output: str | Path, overrides: list[str]) -> Sweep:
    """Check every grid value, then every grid point, before anything trains; errors name the --grid entry."""
    grid = parse_grid(grid_entries)
    base = _resolve(recipe_path, overrides, "--set")
    if base["data"].get("validation_tasks") is None:
        raise HypergenError(f"{recipe_path}: data.validation_tasks: not set; a sweep picks its best run on the "
                            "validation split (a fraction of the training tasks or their names), never on test tasks")
    for entry, (key, values) in zip(grid_entries, grid.items()):
        for value in values:  # each value alone first, so that the error names its --grid entry
            _resolve(recipe_path, overrides + [f"{key}={value}"], f"--grid {entry}")
    labels = point_names(grid)
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        name = ",".join(f"{labels[k]}={re.sub(r'[^A-Za-z0-9._-]', '_', v)}" for k, v in values.items())
        where = "--grid point " + ", ".join(f"{k}={v}" for k, v in values.items())
        points.append(Point(values, name, _resolve(recipe_path, overrides + [f"{k}={v}" for k, v in values.items()],
                                                   where)))
    if len({p.name for p in points}) < len(points):
        raise HypergenError("--grid: two values give the same run folder name; spell them differently")
    return Sweep(recipe_path, Path(output), points, list(overrides), grid)


def _stored_recipe(run_dir: Path) -> dict[str, Any] | None:
    file = run_dir / "recipe.json"
    return json.loads(file.read_text()) if file.is_file() else None


def _finished(run_dir: Path) -> bool:
    return (run_dir / "hypernetwork.safetensors").is_file() or (run_dir / "model" / "config.json").is_file()


def check_output(sweep: Sweep, resume: bool, overwrite: bool) -> None:
    """Refuse, before training, to mix runs: an existing point folder needs --resume (same recipe) or --overwrite."""
    if overwrite:
        return
    for point in sweep.points:
        stored = _stored_recipe(sweep.output / point.name)
        if stored is None:
            continue
        if not resume:
            raise HypergenError(f"{sweep.output}: already holds this sweep's run {point.name}; pass --resume to "
                                "continue it or --overwrite")
        if stored != point.resolved:
            raise HypergenError(f"{sweep.output / point.name}: holds a run of a different recipe; --resume needs the "
                                "same recipe, --set and --grid values")


def metric_of(overall: dict[str, Any]) -> str:
    """The selection metric: rank-classification accuracy where scored so (P3), else ROUGE-L."""
    return "accuracy" if "accuracy" in overall else "rougeL"


def run_sweep(sweep: Sweep, resume: bool = False, overwrite: bool = False, progress: bool = True,
              evaluate_test: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or read back) every point, pick the best on validation, write the table, test the chosen run."""
    from .evaluate import SPLIT_DIRS, evaluate_run
    from .train import train

    check_output(sweep, resume, overwrite)
    rows = []
    for point in sweep.points:
        run_dir = sweep.output / point.name
        same = _stored_recipe(run_dir) == point.resolved
        if not (same and _finished(run_dir)) or overwrite:
            log(f"sweep: training {point.name} -> {run_dir}")
            train(sweep.recipe, str(run_dir), sweep.overrides + point.overrides, resume=same and not overwrite,
                  overwrite=overwrite, progress=progress, evaluate_after=False)
        else:
            log(f"sweep: {point.name} finished before, read back from {run_dir}")
        scores_file = run_dir / SPLIT_DIRS["validation"] / "scores.json"
        weights = [f for f in (run_dir / "hypernetwork.safetensors", run_dir / "model" / "config.json") if f.is_file()]
        if not scores_file.is_file() or scores_file.stat().st_mtime < weights[0].stat().st_mtime:  # stale: redo
            evaluate_run(str(run_dir), progress=progress, split="validation")
        rows.append({"name": point.name, "values": point.values, "run": str(run_dir),
                     "validation": json.loads(scores_file.read_text())["overall"]})
        log(f"sweep: {point.name}: validation {_score_line(rows[-1]['validation'])}")
    metric = metric_of(rows[0]["validation"])
    chosen = max(rows, key=lambda row: row["validation"][metric])  # max keeps the first of equal scores
    result = {"recipe": sweep.recipe, "grid": sweep.grid, "overrides": sweep.overrides, "split": "validation",
              "metric": metric, "runs": rows, "chosen": chosen["name"], "chosen_values": chosen["values"],
              "chosen_run": chosen["run"]}
    _write(sweep.output, result)
    if evaluate_test:
        chosen_dir = Path(chosen["run"])
        test_dir = chosen_dir / SPLIT_DIRS["test"]
        own, validated = test_dir / "scores.json", chosen_dir / SPLIT_DIRS["validation"] / "scores.json"
        if not own.is_file() or own.stat().st_mtime < validated.stat().st_mtime:
            log(f"sweep: evaluating the chosen run {chosen['name']} on the test tasks")
            evaluate_run(str(chosen_dir), progress=progress, split="test")
        for name in ("scores.json", "predictions.jsonl"):
            atomic_write_bytes(sweep.output / "test" / name, (test_dir / name).read_bytes())
        result["test"] = json.loads(own.read_text())["overall"]
        _write(sweep.output, result)
    return result


def _score_line(overall: dict[str, Any]) -> str:
    if "accuracy" in overall:
        return f"accuracy {overall['accuracy']:.2f}"
    return f"ROUGE-L {overall['rougeL']:.2f}  EM {overall['exact_match']:.2f}  ({overall['instances']} instances)"


def format_table(result: dict[str, Any]) -> str:
    """The sweep as a Markdown table: one row per point, its validation scores, the chosen one marked."""
    keys = list(result["grid"])
    metric = result["metric"]
    columns = [metric] if metric == "accuracy" else ["rougeL", "exact_match"]
    titles = {"rougeL": "validation ROUGE-L", "exact_match": "validation EM", "accuracy": "validation accuracy"}
    lines = [f"# Sweep of {result['recipe']}", "",
             f"Chosen by {titles[metric]} (the validation split, held back from the training tasks; ties go to the "
             "earlier point).", "",
             "| " + " | ".join(keys + [titles[c] for c in columns]) + " | run | chosen |",
             "|" + "---|" * len(keys) + "---:|" * len(columns) + "---|:-:|"]
    for row in result["runs"]:
        lines.append("| " + " | ".join([row["values"][k] for k in keys]
                                       + [f"{row['validation'][c]:.2f}" for c in columns])
                     + f" | {Path(row['run']).name} | {'✓' if row['name'] == result['chosen'] else ''} |")
    lines += ["", f"Chosen: {result['chosen']} ({', '.join(f'{k}={v}' for k, v in result['chosen_values'].items())})."]
    if "test" in result:
        lines.append(f"Test score of the chosen run alone: {_score_line(result['test'])} (test/scores.json).")
    return "\n".join(lines) + "\n"


def _write(output: Path, result: dict[str, Any]) -> None:
    atomic_write_json(output / "sweep.json", result)
    atomic_write_text(output / "sweep.md", format_table(result))
