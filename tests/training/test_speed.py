"""The training hot path: loss parts stay tensors until logged, batches are prepared ahead, the FLOP estimate."""

from __future__ import annotations

import random

import pytest
import torch

from hypergen.data.collate import Batch
from hypergen.data.sampling import TaskSampler
from hypergen.recipe import parse_recipe
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import load_tasks
from hypergen.training.methods import HypernetMethod
from hypergen.training.prefetch import PrefetchedBatches
from hypergen.training.trainer import Trainer
from hypergen.training.utilisation import RATE_KEYS, Throughput, measured_matmul_flops

from tests.training.test_training import embedded_recipe


def _trainer(tmp_path, name: str, steps: int = 3) -> Trainer:
    """A Trainer of the tiny embedded recipe, 2 micro-batches a step, its local_consistency regularizer on."""
    data = embedded_recipe(tmp_path, steps)
    data["training"].update({"batch_size": 8, "micro_batch_size": 4, "threads": 1, "device": "cpu",
                             "checkpoint_every": 100})
    recipe = parse_recipe(data)
    random.seed(0)
    torch.manual_seed(0)
    assembled = assemble(recipe, torch.device("cpu"))
    sampler = TaskSampler(load_tasks(recipe, "train"), 0, recipe.data.queries_per_task)
    return Trainer(assembled.method, sampler, assembled.collator, recipe.training, tmp_path / name,
                   assembled.device, progress=False)


def _without_rates(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in RATE_KEYS}


def test_loss_parts_are_tensors_and_the_records_equal_the_float_path(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, "tensors")
    tensor_records = trainer.fit()
    batch = trainer.collator(TaskSampler(trainer.sampler.tasks, 1, 4).next_batch(1), demos_in_input=0.0)
    _, parts = trainer.method.loss(batch, 0)
    assert set(parts) == {"loss", "local_consistency"}
    assert all(isinstance(v, torch.Tensor) and v.shape == () and not v.requires_grad for v in parts.values())

    original = HypernetMethod.loss

    def float_parts(self, batch, step):  # what methods returned before: each part read at once
        loss, parts = original(self, batch, step)
        return loss, {k: float(v) for k, v in parts.items()}

    monkeypatch.setattr(HypernetMethod, "loss", float_parts)
    float_records = _trainer(tmp_path, "floats").fit()
    assert [_without_rates(r) for r in tensor_records] == [_without_rates(r) for r in float_records]
    assert all(isinstance(r["loss"], float) and isinstance(r["local_consistency"], float) for r in tensor_records)


def test_prefetched_batches_are_the_samplers_and_the_saved_state_excludes_the_one_drawn_ahead(tmp_path):
    trainer = _trainer(tmp_path, "prefetch")
    reference = TaskSampler(trainer.sampler.tasks, 0, trainer.sampler.queries_per_task)
    batches = PrefetchedBatches(trainer.sampler, trainer.collator, 2, 0.0, torch.device("cpu"))
    for _ in range(3):
        batch = batches.next()
        expected = trainer.collator(reference.next_batch(2), demos_in_input=0.0)
        assert torch.equal(batch.input_ids, expected.input_ids) and torch.equal(batch.labels, expected.labels)
        assert batches.consumed_state == reference.state_dict()  # not the state after the batch drawn ahead
    batches.settle()
    assert trainer.sampler.state_dict() != reference.state_dict()  # the fourth batch was drawn ahead
    batches.close()
    assert trainer.sampler.state_dict() == reference.state_dict()

    trainer.fit()  # 3 steps of 2 micro-batches: the sampler ends after the 6 batches used, not the 7th drawn
    assert trainer._state()["sampler"] == trainer.sampler.state_dict()
    fresh = TaskSampler(trainer.sampler.tasks, 0, trainer.sampler.queries_per_task)
    for _ in range(3 + 6):
        fresh.next_batch(trainer.tasks_per_micro if _ >= 3 else 2)
    assert trainer.sampler.state_dict() == fresh.state_dict()


def test_the_flop_count_equals_a_hand_count_and_the_records_carry_the_rates(tmp_path):
    """A frozen layer then a trained one, 6 tokens: forward 2*6*(8*16 + 16*4); backward: the trained layer's weight
    and input gradients (2 x 2*6*16*4), the frozen layer's input gradient only (2*6*8*16: its weight gets none).
    batch_tokens counts 6 (2 demo + 3 input + 1 target)."""
    frozen, trained = torch.nn.Linear(8, 16, bias=False), torch.nn.Linear(16, 4, bias=False)
    frozen.weight.requires_grad_(False)
    batch = Batch(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), torch.zeros(1, dtype=torch.long),
                  torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), torch.zeros(1, 1, dtype=torch.long), ["t"], [])
    meter = Throughput(torch.device("cpu"), bf16=False)
    x = torch.randn(6, 8, requires_grad=True)
    with meter.measure(batch):
        trained(frozen(x)).sum().backward()
    forward = 2 * 6 * (8 * 16 + 16 * 4)
    assert meter.flops == forward + 2 * (2 * 6 * 16 * 4) + 2 * 6 * 8 * 16
    with meter.measure(batch):  # estimated, not counted: the same tokens, the same FLOPs
        pass
    assert meter.flops == 2 * (forward + 2 * (2 * 6 * 16 * 4) + 2 * 6 * 8 * 16) and meter.tokens == 12
    rates = meter.rates(examples=2, seconds=0.5)
    assert rates == {"examples_per_s": 4.0, "tokens_per_s": 24.0, "flops_per_s": meter.flops / 0.5,
                     "utilisation": meter.flops / 0.5 / meter.peak}
    assert meter.peak_source == "measured" and measured_matmul_flops("cpu", torch.float32) == meter.peak

    records = _trainer(tmp_path, "rates", steps=2).fit()
    assert all(r["tokens_per_s"] > r["examples_per_s"] > 0 and 0 < r["utilisation"] < 1 for r in records)


def test_adamw_is_fused_on_the_cpu_and_updates_as_the_for_loop_does():
    """make_optimizer's fused AdamW against torch's default per-parameter loop: the same weights after 3 updates."""
    from types import SimpleNamespace

    from hypergen.training.optim import make_optimizer

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(3)]
    cfg = SimpleNamespace(optimizer="adamw", lr=1e-2, weight_decay=0.01)
    results = []
    for build in (lambda ps: make_optimizer(ps, cfg),
                  lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = build(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        results.append((optimizer.defaults["fused"], [p.detach() for p in params]))
    (fused, ours), (_, reference) = results
    assert fused is True
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
