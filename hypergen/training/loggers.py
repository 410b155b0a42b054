"""Metric loggers, as registered components: where the trainer's logged records go.

``jsonl`` (``RUN/metrics.jsonl``, one JSON line per logged step) is always on; a recipe adds others with
``"training": {"loggers": [{"name": "tensorboard"}, {"name": "wandb", "project": "hart"}]}``. Third-party
packages register their own through the entry-point group ``hypergen_loggers``, as with generators.

A logger is built from its recipe parameters (so a missing package fails before training starts), then
``open(run_dir, start_step)`` (``start_step`` > 0 when a run resumes), ``log(record)`` for every logged record,
``close()``. A record is ``{"step": int, "loss": float | None, <one float per regularizer, e.g. "local_consistency">, "lr": float, "examples_per_s": float,
"eval": {"rougeL": ..., ...}, "skipped": str, ...}``; :func:`scalars` flattens it to the numbers other loggers
plot ("eval/rougeL"). Only rank 0 logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import HypergenError
from ..registry import registry
from .metrics_log import append_metrics

ALWAYS_ON = "jsonl"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers, nested dicts flattened with "/" ("eval/rougeL"); "step", text and None left out."""
    out: dict[str, float] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}/", value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
                out[name] = float(value)

    walk("", record)
    return out


class MetricLogger:
    """The interface: ``open`` once, ``log`` each record, ``close`` at the end of training."""

    def open(self, run_dir: Path, start_step: int) -> None:
        raise NotImplementedError

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release; the default has nothing to release."""


@registry.loggers.register("jsonl.v1")
class JsonlLogger(MetricLogger):
    """``RUN/metrics.jsonl``: one line per record, with one write and a flush, so that a kill leaves at most one
    partial last line (dropped on resume together with lines past the checkpoint)."""

    def open(self, run_dir: Path, start_step: int) -> None:
        self.run_dir = Path(run_dir)

    def log(self, record: dict[str, Any]) -> None:
        append_metrics(self.run_dir, record)  # the one writer of metrics.jsonl (training/metrics_log.py)


@registry.loggers.register("tensorboard.v1")
class TensorboardLogger(MetricLogger):
    """TensorBoard event files (``torch.utils.tensorboard``) in ``log_dir`` (default ``RUN/tensorboard``; relative
    to the run folder), one scalar per number of the record. A resumed run purges the events past its checkpoint."""

    def __init__(self, log_dir: str = "tensorboard") -> None:
        try:
            import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        except ImportError:
            raise HypergenError("the tensorboard logger needs the tensorboard package: pip install tensorboard "
                                "(or the hypergen[loggers] extra)") from None
        self.log_dir = log_dir

    def open(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run_dir) / self.log_dir
        self.writer = SummaryWriter(str(self.folder), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=record["step"])
        self.writer.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


@registry.loggers.register("wandb.v1")
class WandbLogger(MetricLogger):
    """Weights & Biases (when ``wandb`` is installed): one W&B run per hypergen run, its config the resolved recipe.
    ``mode`` "offline" writes under ``RUN/wandb`` only (``wandb sync`` uploads it later); None: wandb's default
    (``WANDB_MODE``). The W&B run id is kept in ``RUN/wandb-run-id.txt``, so a resumed run continues the same one."""

    def __init__(self, project: str | None = None, entity: str | None = None, name: str | None = None,
                 mode: str | None = None, tags: list[str] | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise HypergenError("wandb is not installed: pip install wandb (or remove it from training.loggers)") \
                from None
        if mode not in (None, "online", "offline", "disabled"):
            raise HypergenError(f"mode: expected 'online', 'offline' or 'disabled', got {mode!r}")
        self.wandb = wandb
        self.settings = {"project": project, "entity": entity, "name": name, "mode": mode, "tags": tags}

    def open(self, run_dir: Path, start_step: int) -> None:
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb-run-id.txt"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = self.wandb.util.generate_id()
            id_file.write_text(run_id + "\n")
        recipe_file = run_dir / "recipe.json"
        config = json.loads(recipe_file.read_text()) if recipe_file.is_file() else None
        settings = {k: v for k, v in self.settings.items() if v is not None}
        settings.setdefault("name", run_dir.name)
        self.run = self.wandb.init(dir=str(run_dir), id=run_id, resume="allow", config=config, **settings)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The always-on ``jsonl`` logger plus the recipe's ``training.loggers``, used as one."""

    def __init__(self, specs) -> None:
        from ..components.build import make_component
        from ..recipe import ComponentSpec

        specs = list(specs)
        if not any(spec.name.split(".v")[0] == ALWAYS_ON for spec in specs):
            specs.insert(0, ComponentSpec(name=ALWAYS_ON))
        self.loggers = [make_component("loggers", spec, f"training.loggers.{i}") for i, spec in enumerate(specs)]

    def open(self, run_dir: Path, start_step: int) -> "Loggers":
        for logger in self.loggers:
            logger.open(Path(run_dir), start_step)
        return self

    def log(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
