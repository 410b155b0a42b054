"""Turn sampled (task, queries) groups into tensors.

A batch holds T tasks and B >= T examples; ``task_index[b]`` is the task row of example b, so the hypernetwork
runs once per task and its parameters are shared by that task's queries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .controls import DemoControl
from .format import DEMOS_QUERY_SEPARATOR, demos_text, query_text
from .tasks import Example, Task


@dataclass
class Batch:
    demo_ids: torch.Tensor        # T x n_d
    demo_mask: torch.Tensor       # T x n_d
    task_index: torch.Tensor      # B
    input_ids: torch.Tensor       # B x n_x
    attention_mask: torch.Tensor  # B x n_x
    labels: torch.Tensor | None   # B x n_y, padding = -100
    task_names: list[str]         # T
    references: list[tuple[str, ...]]  # B

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)

    @property
    def num_examples(self) -> int:
        return int(self.input_ids.shape[0])


class Collator:
    """Tokenizes demos (Def+kPos), queries and targets with the recipe's length limits."""

    def __init__(self, tokenizer, data_cfg, control: DemoControl | None = None) -> None:
        """``control``: a demos control (``random`` or ``none``) applied to every demos sequence tokenized."""
        self.tokenizer = tokenizer
        self.cfg = data_cfg
        self.control = control
        self._demo_cache: dict[tuple, str] = {}

    def demos(self, task: Task) -> str:
        """The demos text of ``task``, cached by its name and demos (P3 tasks get new demos at every draw)."""
        key = (task.name, tuple(task.positives[: self.cfg.num_positive]))
        if key not in self._demo_cache:
            if len(self._demo_cache) > 50_000:
                self._demo_cache.clear()
            self._demo_cache[key] = demos_text(task, self.cfg.num_positive, self.cfg.include_definition,
                                               self.cfg.demo_style)
        return self._demo_cache[key]

    def encode_demos(self, tasks: list[Task]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(demo_ids, demo_mask)``, T x n_d, of the tasks' demos: what the hypernetwork reads for them."""
        texts = [self.demos(t) for t in tasks]
        demos = self._encode(texts, self.cfg.max_demo_length)
        if self.control is not None:
            return self.control.demo_batch(demos["input_ids"], demos["attention_mask"], texts)
        return demos["input_ids"], demos["attention_mask"]

    def encode_inputs(self, inputs: list[tuple[str | None, str]]):
        """``input_ids``, ``attention_mask`` (B x n_x) of (demos or None, query) pairs, right-padded.

        The query keeps its first ``max_input_length`` tokens, as without demos. Demos come first, cut at the end
        to what the query leaves of ``max_demo_length + max_input_length`` (so the query is never cut for them, as
        in Tk-Instruct), then ``DEMOS_QUERY_SEPARATOR`` of the demo style, then the query. Under a demos control,
        the demos tokens are random ones (``random``), or the query comes alone (``none``)."""
        separator = self.tokenizer(DEMOS_QUERY_SEPARATOR[self.cfg.demo_style], add_special_tokens=False)["input_ids"]
        rows = []
        for demos, query in inputs:
            ids = self.tokenizer(query, max_length=self.cfg.max_input_length, truncation=True)["input_ids"]
            if demos is not None and not (self.control and self.control.drops_demos):
                budget = self.cfg.max_demo_length + self.cfg.max_input_length - len(ids) - len(separator)
                demo_ids = self.tokenizer(demos, add_special_tokens=False)["input_ids"][: max(budget, 0)]
                if self.control is not None:
                    demo_ids = self.control.replace_ids(demo_ids, demos)
                ids = demo_ids + separator + ids
            rows.append(ids)
        return self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")

    def _encode(self, texts: list[str], max_length: int):
        return self.tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")

    def __call__(self, groups: list[tuple[Task, list[Example]]], with_labels: bool = True,
                 demos_in_input: bool | float = False) -> Batch:
        """``demos_in_input``: put the task's demos before each query (fine-tuning baselines); a fraction in
        (0, 1) does so for that share of examples, drawn with Python's ``random`` (checkpointed by the trainer).
        Such an input is demos + separator + query, see :meth:`encode_inputs`."""
        tasks = [task for task, _ in groups]
        demo_ids, demo_mask = self.encode_demos(tasks)
        task_index, inputs, targets, references = [], [], [], []
        for row, (task, examples) in enumerate(groups):
            for example in examples:
                task_index.append(row)
                query = query_text(example)
                with_demos = demos_in_input >= 1 or (demos_in_input > 0 and random.random() < demos_in_input)
                inputs.append((self.demos(task) if with_demos else None, query))
                targets.append(example.outputs[0])
                references.append(tuple(example.outputs))
        enc = self.encode_inputs(inputs)
        labels = None
        if with_labels:
            lab = self._encode(targets, self.cfg.max_target_length)
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        return Batch(demo_ids, demo_mask, torch.tensor(task_index), enc["input_ids"],
                     enc["attention_mask"], labels, [t.name for t in tasks], references)
