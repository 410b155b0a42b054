"""What is trained: a hypernetwork over a frozen main model, or the main model itself (fine-tuning baselines).

Both offer the same small surface to the Trainer (:class:`.backends.base.Method`) and the evaluator:
``module`` (the trainable nn.Module), ``loss(batch, step) -> (loss, parts)``, ``adapt(batch)`` (task parameters
from a batch's demos, or None) and ``generate(batch, adapted) -> token ids``.

``parts`` (what ``metrics.jsonl`` logs): ``loss``, the prediction cross-entropy, and each regularizer's unweighted
term under its registered name (:func:`regularizer_keys`), as detached scalar tensors: reading them would wait for
the device, so the Trainer sums them as tensors and reads them once per step.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..components.base import PEFTTarget, Regularizer
from ..data.collate import Batch
from ..models.adapted import adapted_forward, adapted_generate, main_forward, main_generate
from ..models.hypernet import HyperNetwork, TaskParameters
from ..registry import registry
from .utilisation import RATE_KEYS

RECORD_KEYS = ("step", "loss", "skipped", "lr", *RATE_KEYS, "eval")  # a metrics.jsonl record's own keys


class HypernetMethod:
    """HART, HyperTuning and hybrids: L = L_pred + sum_i alpha_i * R_i(states).

    ``demos_in_input`` (the recipe's ``data.demos_in_input``): the main model also reads each task's demos before
    its query, in training and evaluation (with the ``learned_states`` generator: Prefix-Tuning / LoRA on
    FT-Few-Shot)."""

    def __init__(self, main_model: nn.Module, hypernet: HyperNetwork, target: PEFTTarget,
                 regularizers: list[Regularizer], fusion: bool, eval_cfg, demos_in_input: bool = False) -> None:
        self.demos_in_input = demos_in_input
        self.train_demos_in_input = float(demos_in_input)
        self.main_model = main_model
        self.module = hypernet
        self.target = target
        self.regularizers = regularizers
        self.regularizer_keys = regularizer_keys(regularizers)
        self.fusion = fusion
        self.eval_cfg = eval_cfg

    def loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        task_params = self.module(batch.demo_ids, batch.demo_mask)
        per_example = task_params.select(batch.task_index)
        pred = adapted_forward(self.main_model, self.target, per_example, batch.input_ids, batch.attention_mask,
                               batch.labels, self.fusion).loss
        total, parts = pred, {"loss": pred.detach()}
        for key, regularizer in zip(self.regularizer_keys, self.regularizers):
            value = regularizer.loss(task_params.generated.states, step)
            total = total + regularizer.alpha * value
            parts[key] = value.detach()
        return total, parts

    @torch.no_grad()
    def adapt(self, batch: Batch) -> TaskParameters:
        return self.module(batch.demo_ids, batch.demo_mask).detach()

    @torch.no_grad()
    def generate(self, batch: Batch, adapted: TaskParameters | None) -> torch.Tensor:
        per_example = adapted.select(batch.task_index)
        return adapted_generate(self.main_model, self.target, per_example, batch.input_ids, batch.attention_mask,
                                self.fusion, self.eval_cfg.max_new_tokens, self.eval_cfg.num_beams)

    @torch.no_grad()
    def score(self, batch: Batch, adapted: TaskParameters) -> torch.Tensor:
        """log p(labels | input) per example (B,), with each example's generated parameters."""
        logits = adapted_forward(self.main_model, self.target, adapted.select(batch.task_index), batch.input_ids,
                                 batch.attention_mask, batch.labels, self.fusion).logits
        return sequence_log_likelihood(logits, batch.labels)

    def train(self) -> None:
        self.module.train()
        self.main_model.eval()

    def eval(self) -> None:
        self.module.eval()


class FinetuneMethod:
    """Multi-task fine-tuning of the main model: FT-Zero-Shot (query only) or FT-Few-Shot (demos + query)."""

    def __init__(self, model: nn.Module, few_shot: bool, eval_cfg, train_demos_fraction: float | None = None) -> None:
        self.module = model
        self.main_model = model
        self.demos_in_input = few_shot
        self.train_demos_in_input = float(few_shot) if train_demos_fraction is None else train_demos_fraction
        self.regularizers: list[Regularizer] = []
        self.eval_cfg = eval_cfg
        for parameter in model.parameters():
            parameter.requires_grad_(True)

    def loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = main_forward(self.module, batch.input_ids, batch.attention_mask, batch.labels).loss
        return loss, {"loss": loss.detach()}

    def adapt(self, batch: Batch) -> None:
        return None

    @torch.no_grad()
    def generate(self, batch: Batch, adapted: None) -> torch.Tensor:
        return main_generate(self.module, batch.input_ids, batch.attention_mask, self.eval_cfg.max_new_tokens,
                             self.eval_cfg.num_beams)

    @torch.no_grad()
    def score(self, batch: Batch, adapted: None) -> torch.Tensor:
        """log p(labels | input) per example (B,)."""
        logits = main_forward(self.module, batch.input_ids, batch.attention_mask, batch.labels).logits
        return sequence_log_likelihood(logits, batch.labels)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()


def regularizer_keys(regularizers: list[Regularizer]) -> list[str]:
    """The logged key of each regularizer's term: the name it is registered under, without a version (a recipe's
    ``local_consistency`` or ``local_consistency.v1``: ``local_consistency``), or its class name when it is not
    registered. A name already taken (a second regularizer of the same name, or a record key such as ``loss``)
    gets a suffix: ``local_consistency_2``, ``local_consistency_3``, ..."""
    registered: dict[object, str] = {}
    for name, factory in sorted(registry.entries("regularizers").items(), reverse=True):
        registered[factory] = re.sub(r"\.v\d+$", "", name)  # the smallest name wins when there are several
    keys: list[str] = []
    for regularizer in regularizers:
        base = registered.get(type(regularizer), type(regularizer).__name__)
        key, count = base, 1
        while key in keys or key in RECORD_KEYS:
            count += 1
            key = f"{base}_{count}"
        keys.append(key)
    return keys


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of log p(y_t | y_<t, x): logits B x n_y x V, labels B x n_y (-100 = padding) -> B."""
    keep = labels != -100
    log_probs = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (log_probs * keep).sum(-1)
