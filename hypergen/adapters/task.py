"""One task's generated adapter in Python: what ``HyperNetwork.adapt`` returns.

It holds the task's PEFT parameters (one hypernetwork pass over its demos) bound to the loaded run's frozen main
model and tokenizer, and

* ``generate(queries)`` decodes queries with them, batched, exactly as ``hypergen predict`` (and ``hypergen
  eval``) do;
* ``save_pretrained(folder)`` writes the same adapter folder as ``hypergen adapt`` (see :mod:`hypergen.adapters`);
* ``to_peft()`` (LoRA runs) gives a ``peft.PeftModel`` on a copy of the main model.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .folder import Adapter, export_adapter, prediction_settings, write_adapter
from ..evaluation.predict import predict
from ..data.tasks import Task
from ..errors import HypergenError
from ..models.hypernet import TaskParameters


class TaskAdapter:
    """``parameters``: the task's parameters, a batch of one: ``params`` {group: 1 x L x rows x width},
    ``encoder_states`` 1 x n_d x d_h and ``encoder_mask`` 1 x n_d (the demos' hypernetwork-encoder states, read by
    the main decoder with fusion-in-decoder)."""

    def __init__(self, assembled, task: Task, parameters: TaskParameters, run_dir: Path | None = None) -> None:
        self.assembled = assembled
        self.task = task
        self.parameters = parameters
        self.run_dir = run_dir

    def __repr__(self) -> str:
        return f"TaskAdapter(task={self.task.name!r}, kind={self.kind!r}, groups={sorted(self.params)})"

    @property
    def kind(self) -> str:
        """The PEFT target's registered name: "prefix" or "lora" (or a plugin's)."""
        return self.assembled.recipe.peft.name.split(".v")[0]

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The task's parameters, {group: num_layers x rows x width} (LoRA's B slot stored transposed)."""
        return {k: v[0] for k, v in self.parameters.params.items()}

    @property
    def fusion(self) -> bool:
        return bool(self.assembled.method.fusion)

    def _adapter(self) -> Adapter:
        """The task's parameters as the loaded-adapter object ``hypergen predict`` decodes with."""
        method = self.assembled.method
        dtype = next(method.main_model.parameters()).dtype
        settings = prediction_settings(self.assembled)  # the run's prompt too, as the adapter folder records it
        states = self.parameters.encoder_states.to(dtype) if self.fusion else None
        mask = self.parameters.encoder_mask if self.fusion else None
        gate = self.parameters.fusion_gate if self.fusion else None
        return Adapter(None, self.kind, method.target, {k: v.to(dtype) for k, v in self.parameters.params.items()},
                       states, mask, None if gate is None else gate.detach(), settings)

    def generate(self, queries: list[str], batch_size: int = 16, max_new_tokens: int | None = None,
                 num_beams: int | None = None) -> list[str]:
        """Decode each query with the adapter applied (default lengths and beams: the run's evaluation settings)."""
        if not isinstance(queries, (list, tuple)) or not all(isinstance(q, str) for q in queries):
            raise HypergenError(f"generate: queries must be a list of strings, got {type(queries).__name__}")
        if not queries:
            return []
        return predict(self._adapter(), self.assembled.method.main_model, self.assembled.tokenizer, list(queries),
                       batch_size, max_new_tokens, num_beams, progress=False)

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the adapter folder ``hypergen adapt`` writes (atomically); a ``tiny`` main model goes into
        ``folder/base_model``. An existing non-empty folder needs ``overwrite``."""
        return export_adapter(self.assembled, self.task, folder, run_dir=self.run_dir, overwrite=overwrite,
                              parameters=self.parameters)

    def to_peft(self) -> Any:
        """A ``peft.PeftModel`` (LoRA) on a copy of the main model, loaded from the peft folder this adapter
        exports. peft has no fusion-in-decoder: for a run trained with it (the default) the peft model applies
        only the LoRA part (a warning says so); ``generate`` applies both."""
        if self.kind != "lora":
            raise HypergenError(f"to_peft: a {self.kind!r} adapter has no peft equivalent (only LoRA runs export "
                                "to peft); use generate() or save_pretrained()")
        try:
            import peft
        except ImportError:
            raise HypergenError("to_peft: peft is not installed (pip install peft)") from None
        if self.fusion:
            warnings.warn("to_peft: this run uses fusion-in-decoder, which peft cannot express; the PeftModel "
                          "applies only the generated LoRA weights", stacklevel=2)
        method = self.assembled.method
        base = copy.deepcopy(method.main_model)
        with tempfile.TemporaryDirectory() as tmp:
            write_adapter(Path(tmp), method.target, self.params, method.main_model, None)
            return peft.PeftModel.from_pretrained(base, tmp)
