"""A run's training log, ``RUN/metrics.jsonl``: one JSON object per logged step, ``{"step", "loss", <one key per
regularizer>, "lr", "examples_per_s", "tokens_per_s", "flops_per_s", "utilisation"}``: the rates since the run (or
its resumption) started, :mod:`.utilisation` says how the FLOPs are counted; a skipped update has ``"loss": null``
and a ``"skipped"`` reason; a periodic evaluation adds ``"eval"``. The one reader and writer of that file: the
trainer appends and, on resume, truncates; plots and reports read.

A process killed while writing leaves at most one partial last line: every line is written with one write and a
flush, and the reader leaves out any line that is not a complete JSON object with a numeric ``step``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, writing
from .faults import fault_requested, maybe_kill

METRICS_FILE = "metrics.jsonl"


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` in file order; [] when there is no such file."""
    path = metrics_path(run_dir)
    if not path.is_file():
        return []
    records = []
    with writing(path):
        text = path.read_bytes().decode("utf-8", errors="replace")
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a partial line (the process died while writing it) or a damaged one
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append ``record`` (it has a ``step``) as one line, with one write, a flush and an fsync; a failed write (a
    full disk) is one line naming the file (``--resume`` drops a partial line)."""
    path = metrics_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    with writing(path), open(path, "a") as handle:
        if fault_requested("during_log", record["step"]):  # testing hook: die halfway through the line
            handle.write(line[: len(line) // 2])
            handle.flush()
            maybe_kill("during_log", record["step"])
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only the records of steps up to ``last_step`` (a resumed run's checkpoint), dropping later ones and any
    partial line; nothing to do without a log."""
    if not metrics_path(run_dir).is_file():
        return
    kept = [record for record in read_metrics(run_dir) if record["step"] <= last_step]
    atomic_write_text(metrics_path(run_dir), "".join(json.dumps(record) + "\n" for record in kept))
