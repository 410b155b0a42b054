"""Per-task backprop fine-tuning of the frozen main model: the Prefix-Tuning and LoRA baselines.

One :class:`PerTaskTuner` fine-tunes a fresh set of PEFT parameters on one task's demos (its positive examples
as the training batch), with AdamW, and decodes with them; the main model's own weights never change, and
:meth:`PerTaskTuner.close` gives the stock model back. Used by ``hypergen bench`` (time per step, steps to reach
the hypernetwork's score) and by the reproduction study (the Prefix-Tuning and LoRA rows of Table 2).

* ``lora``: peft's LoRA (rank ``lora_rank`` on ``q`` and ``v``; a causal LM's ``q_proj`` and ``v_proj``), as a
  user of peft would set it up;
* ``prefix``: learnable key/value prefixes of length ``prefix_length`` in every encoder and decoder self-attention,
  through hypergen's :class:`~hypergen.components.targets.prefix.PrefixTarget` (peft's T5 prefix tuning puts no
  prefix into the encoder, and drops it in ``generate()``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .components.targets.prefix import PrefixTarget
from .data.collate import Batch, Collator
from .data.tasks import Task
from .models.adapted import main_forward, main_generate
from .models.families import family_of

KINDS = ("lora", "prefix")


class PerTaskTuner:
    """A fresh set of PEFT parameters for one task on ``main`` (frozen), trained by backprop."""

    def __init__(self, main: nn.Module, kind: str, lr: float, seed: int, prefix_length: int = 8,
                 lora_rank: int = 8) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self.main = main
        self.kind = kind
        device = next(main.parameters()).device
        torch.manual_seed(seed)
        if kind == "lora":
            from peft import LoraConfig, get_peft_model

            models_family = family_of(main)  # peft's default targets, as a peft user would adapt
            self.model = get_peft_model(main, LoraConfig(r=lora_rank,
                                                         target_modules=list(models_family.default_lora_targets),
                                                         task_type=models_family.peft_task_type))
            self.params = [p for p in self.model.parameters() if p.requires_grad]
        else:
            self.model = main
            self.target = PrefixTarget(prefix_length)
            self.target.prepare(main)
            # one task: a batch dimension of 1, broadcast over the batch by the prefix target
            self.prefix = {g.name: nn.Parameter(0.02 * torch.randn(1, g.num_layers, g.rows, g.width, device=device))
                           for g in self.target.slot_groups(main)}
            self.params = list(self.prefix.values())
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)

    def _context(self):
        return nullcontext() if self.kind == "lora" else self.target.applied(self.main, self.prefix)

    def step(self, batch: Batch) -> float:
        """One AdamW step on ``batch`` (with labels); returns the loss."""
        with self._context():
            loss = main_forward(self.model, batch.input_ids, batch.attention_mask, batch.labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of ``batch``'s inputs: B x n_y token ids."""
        with self._context():
            return main_generate(self.model, batch.input_ids, batch.attention_mask, max_new_tokens)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def close(self) -> None:
        """Remove the LoRA layers (the main model is the stock model again) and drop the parameters."""
        if self.kind == "lora":
            self.model.unload()
        self.optimizer = None
        self.params = []


def demos_batch(collator: Collator, task: Task, device) -> Batch:
    """The training batch of a task's per-task fine-tuning: its positive examples (the demos), or its first four
    instances when it has none."""
    examples = task.positives[: collator.cfg.num_positive] or task.instances[:4]
    return collator([(task, examples)]).to(device)


def tune_and_predict(main: nn.Module, collator: Collator, task: Task, kind: str, steps: int, lr: float, seed: int,
                     max_instances: int, max_new_tokens: int, batch_size: int, device,
                     prefix_length: int = 8, lora_rank: int = 8) -> list[dict[str, Any]]:
    """Fine-tune ``kind`` parameters on ``task``'s demos for ``steps`` steps, then decode its first
    ``max_instances`` instances: records {task, input, prediction, references} as the evaluator writes them."""
    tuner = PerTaskTuner(main, kind, lr, seed, prefix_length=prefix_length, lora_rank=lora_rank)
    try:
        batch = demos_batch(collator, task, device)
        main.eval()  # no dropout while tuning, as in the bench and in evaluation
        for _ in range(steps):
            tuner.step(batch)
        records = []
        instances = task.instances[:max_instances]
        for start in range(0, len(instances), batch_size):
            chunk = instances[start:start + batch_size]
            query = collator([(task, chunk)], with_labels=False).to(device)
            texts = collator.tokenizer.batch_decode(tuner.generate(query, max_new_tokens), skip_special_tokens=True)
            records += [{"task": task.name, "input": e.input, "prediction": t.strip(), "references": list(e.outputs)}
                        for e, t in zip(chunk, texts)]
        return records
    finally:
        tuner.close()
