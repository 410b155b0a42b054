"""Training-loss curves of one or more runs, and the loss variance over a sliding window.

A run's ``metrics.jsonl`` (:mod:`hypergen.training.metrics_log`) holds one JSON object per logged step:
``{"step", "loss", ..., "lr", "examples_per_s"}`` where ``loss`` is the prediction cross-entropy, each
regularizer's unweighted term is under its registered name (``local_consistency``; a second one of the same name
``local_consistency_2``), and a step whose update was skipped (non-finite loss or gradient) has ``"loss": null``
and a ``"skipped"`` reason. Any numeric key can be plotted (``metric``).

The loss variance (:func:`loss_variance`), the number printed and written beside the plot::

    last   = the largest logged step
    tail   = the logged points with step > last / 2 and a finite value, in step order   (the second half)
    w      = min(window, len(tail))
    var    = mean over the len(tail) - w + 1 windows of w consecutive tail points of
             the population variance (ddof 0) of the values in the window
    (undefined, null, when the tail has fewer than 2 points)

It measures how much the loss jitters from one logged point to the next late in training (a slow downward trend
adds little), e.g. to compare the stability of HART and HyperTuning. Points are logged every
``training.log_every`` steps, so compare runs logged at the same interval.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import HypergenError
from ..io import atomic_write_json
from ..training.metrics_log import METRICS_FILE, read_metrics

DEFINITION = ("mean, over every window of W consecutive logged points with a finite value in the second half of "
              "training (step > last logged step / 2), of the population variance (ddof 0) of the metric within "
              "the window; W = min(window, number of such points); null with fewer than 2 points")


def loss_variance(steps: Sequence[float], losses: Sequence[float | None], window: int,
                  tail: float = 0.5) -> float | None:
    """The sliding-window loss variance of one run (see the module docstring); a pure function.

    ``steps``, ``losses``: sequences of the same length N (one entry per logged point, any order; a loss may be
    None or NaN for a skipped step: it is left out). ``window``: W >= 1 points per window. ``tail``: the fraction
    of training kept at the end (0.5: points with step > (1 - 0.5) * last step). Returns a float, or None when
    fewer than 2 points remain.
    """
    if window < 1:
        raise ValueError(f"window: expected an integer >= 1, got {window}")
    if len(steps) != len(losses):
        raise ValueError(f"steps and losses differ in length ({len(steps)} != {len(losses)})")
    if not len(steps):
        return None
    last = max(float(s) for s in steps)
    points = sorted((float(s), float(v)) for s, v in zip(steps, losses)
                    if v is not None and math.isfinite(float(v)) and float(s) > (1.0 - tail) * last)
    values = np.array([v for _, v in points], dtype=np.float64)
    if len(values) < 2:
        return None
    width = min(window, len(values))
    windows = np.lib.stride_tricks.sliding_window_view(values, width)  # (len - w + 1) x w
    return float(windows.var(axis=1).mean())


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` in file order (a half-written last line is left out); a missing
    run folder or log, or a log without steps, is an error naming it."""
    run = Path(run_dir)
    if not run.is_dir():
        raise HypergenError(f"--run: {run} does not exist")
    if not (run / METRICS_FILE).is_file():
        raise HypergenError(f"{run}: no {METRICS_FILE} (not a run folder, or training has logged nothing yet)")
    records = read_metrics(run)
    if not records:
        raise HypergenError(f"{run / METRICS_FILE}: no logged steps")
    return records


def metric_series(records: list[dict[str, Any]], metric: str, source: str = "metrics.jsonl"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: two float arrays of length N (one per record); NaN where the record has no finite value
    (a skipped step). Raises when no record has a numeric ``metric``."""
    steps, values = [], []
    for record in records:
        value = record.get(metric)
        steps.append(float(record["step"]))
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        values.append(float(value) if ok else math.nan)
    values_array = np.array(values, dtype=np.float64)
    if not np.isfinite(values_array).any():
        keys = sorted({k for r in records for k, v in r.items()
                       if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
        raise HypergenError(f"{source}: no finite {metric!r} values (numeric keys: {', '.join(keys) or 'none'})")
    return np.array(steps, dtype=np.float64), values_array


def summarize(label: str, run_dir: Path, records: list[dict[str, Any]], metric: str, window: int) -> dict[str, Any]:
    """One run's summary: points, step range, first / final (mean of the last ``window`` points) / min value, the
    sliding-window variance and how many steps were skipped."""
    steps, values = metric_series(records, metric, f"{Path(run_dir) / METRICS_FILE}")
    finite = np.isfinite(values)
    kept = values[finite]
    variance = loss_variance(steps.tolist(), values.tolist(), window)
    last = steps.max()
    tail_points = int(np.sum(finite & (steps > last / 2)))
    return {
        "label": label, "run": str(run_dir), "metric": metric, "points": int(finite.sum()),
        "skipped": sum(1 for r in records if "skipped" in r),
        "first_step": int(steps[finite].min()), "last_step": int(last),
        "first": float(kept[0]), "final": float(kept[-window:].mean()), "min": float(kept.min()),
        "variance": variance, "variance_points": tail_points,
        "variance_window": min(window, tail_points) if tail_points else 0,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One line: ``label: N points (steps a..b), metric first / final / min, variance ..., K skipped``."""
    variance = summary["variance"]
    var_text = (f"{variance:.4g} (window {summary['variance_window']}, {summary['variance_points']} points in the "
                f"2nd half)" if variance is not None else "n/a (fewer than 2 points in the 2nd half)")
    return (f"{summary['label']}: {summary['points']} points (steps {summary['first_step']}..{summary['last_step']}), "
            f"{summary['metric']} first {summary['first']:.4g} final {summary['final']:.4g} min {summary['min']:.4g}, "
            f"variance {var_text}, {summary['skipped']} skipped")


def plot_loss(runs: Sequence[str | Path], labels: Sequence[str] = (), out: str | Path | None = None,
              window: int = 10, metric: str = "loss") -> tuple[Path, Path, list[dict[str, Any]]]:
    """Draw ``metric`` against step for every run on one PNG and write the summaries as JSON beside it.

    ``runs``: R run folders; ``labels``: up to R names (the rest: folder names). ``out``: the PNG (default
    ``<first run>/plots/<metric>.png``); the JSON is the same path with ``.json``. Each run is drawn raw (faint) and
    as a moving average over ``window`` points. Returns ``(png, json, summaries)``; both files are written
    atomically.
    """
    if window < 1:
        raise HypergenError(f"--window: expected an integer >= 1, got {window}")
    if not runs:
        raise HypergenError("plot loss: give at least one --run")
    if len(labels) > len(runs):
        raise HypergenError(f"--label: {len(labels)} labels for {len(runs)} runs")
    names = list(labels) + [Path(r).name or str(r) for r in runs[len(labels):]]
    loaded = [(name, Path(run), load_metrics(Path(run))) for name, run in zip(names, runs)]
    summaries = [summarize(name, run, records, metric, window) for name, run, records in loaded]
    png = Path(out) if out else Path(runs[0]) / "plots" / f"{metric}.png"
    if png.suffix.lower() != ".png":
        raise HypergenError(f"--out: {png} should end in .png")
    json_path = png.with_suffix(".json")

    from .figure import pyplot, save_png

    plt = pyplot()
    fig, axis = plt.subplots(figsize=(8, 4.5))
    for index, ((name, run, records), summary) in enumerate(zip(loaded, summaries)):
        steps, values = metric_series(records, metric)
        keep = np.isfinite(values)
        color = f"C{index % 10}"
        x, y = steps[keep], values[keep]
        axis.plot(x, y, color=color, alpha=0.3, linewidth=0.8)
        smooth = y if window == 1 or len(y) < window else np.convolve(y, np.ones(window) / window, mode="valid")
        variance = summary["variance"]
        legend = f"{name} (var {variance:.3g})" if variance is not None else name
        axis.plot(x[len(x) - len(smooth):], smooth, color=color, linewidth=1.6, label=legend)
        skipped = steps[~keep]
        if len(skipped):
            axis.plot(skipped, np.full(len(skipped), np.nanmin(values)), "x", color=color, markersize=4)
    axis.set_xlabel("step")
    axis.set_ylabel(metric)
    axis.set_title(f"training {metric} (faint: logged, solid: mean of {window} points; "
                   f"var: window {window}, 2nd half)", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, png)
    atomic_write_json(json_path, {"metric": metric, "window": window, "variance_definition": DEFINITION,
                                  "runs": summaries})
    return png, json_path, summaries
