"""Per-task paired comparisons of two rows of the study: on how many held-out tasks one method scores above the
other (ROUGE-L per task, averaged over the seeds each has), and the scatter of one against the other.

A run's per-task scores are read from its ``eval/scores.json`` (``per_task``: {task: {"rougeL", ...}}), the same
instances for every row."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .plan import METHODS, PAIRS

TIE = 0.5  # ROUGE-L points: a per-task difference smaller than this counts as a tie


def per_task(runs: dict[str, Any], key: str) -> dict[str, float]:
    """{task: ROUGE-L averaged over the seeds of ``key`` whose scores can be read}; {} when none can."""
    scores: dict[str, list[float]] = {}
    for entry in runs.get(key, {}).values():
        if "run" not in entry:
            continue
        scores_file = Path(entry["run"]) / "eval" / "scores.json"
        if not scores_file.is_file():
            continue
        for task, value in json.loads(scores_file.read_text()).get("per_task", {}).items():
            scores.setdefault(task, []).append(value["rougeL"])
    return {task: statistics.fmean(values) for task, values in scores.items()}


def paired(runs: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """``a`` against ``b`` over the tasks both scored: counts of tasks ahead / behind / tied (within :data:`TIE`)
    and the mean per-task difference; None when either has no per-task scores."""
    first, second = per_task(runs, a), per_task(runs, b)
    tasks = sorted(set(first) & set(second))
    if not tasks:
        return None
    differences = [first[t] - second[t] for t in tasks]
    return {"tasks": len(tasks), "ahead": sum(d >= TIE for d in differences),
            "behind": sum(d <= -TIE for d in differences), "tied": sum(abs(d) < TIE for d in differences),
            "mean_difference": statistics.fmean(differences)}


def paired_table(runs: dict[str, Any]) -> list[str]:
    """One row per pair of :data:`~hypergen.reproduce.plan.PAIRS` that both ran; empty when none did."""
    rows = []
    for a, b in PAIRS:
        result = paired(runs, a, b)
        if result is None:
            continue
        rows.append(f"| {METHODS[a].label} vs {METHODS[b].label} | {result['tasks']} | {result['ahead']} | "
                    f"{result['behind']} | {result['tied']} | {result['mean_difference']:+.2f} |")
    if not rows:
        return []
    return ["| pair (A vs B) | tasks | A ahead | A behind | tied (< 0.5) | mean A - B |",
            "|---|---:|---:|---:|---:|---:|", *rows]


def scatter(runs: dict[str, Any], a: str, b: str, out: Path) -> list[str]:
    """A per-task scatter of ``a`` (y) against ``b`` (x), ROUGE-L, the diagonal drawn; a line saying why not when
    either has no per-task scores."""
    from ..plots.figure import pyplot, save_png

    first, second = per_task(runs, a), per_task(runs, b)
    tasks = sorted(set(first) & set(second))
    if not tasks:
        return [f"({METHODS[a].label} against {METHODS[b].label}: no per-task scores of both to draw)"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    xs, ys = [second[t] for t in tasks], [first[t] for t in tasks]
    top = max(xs + ys + [1.0]) * 1.05
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--")
    ax.scatter(xs, ys, s=18)
    ax.set_xlim(0, top), ax.set_ylim(0, top)
    ax.set_xlabel(f"{METHODS[b].label} (ROUGE-L)", fontsize=8)
    ax.set_ylabel(f"{METHODS[a].label} (ROUGE-L)", fontsize=8)
    ax.set_title(f"per held-out task ({len(tasks)}); above the diagonal: {METHODS[a].label} ahead", fontsize=8)
    fig.tight_layout()
    save_png(fig, out)
    return [f"![{METHODS[a].label} against {METHODS[b].label}]({out.parent.name}/{out.name})"]
