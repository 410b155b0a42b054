"""Fusion-in-decoder computes the demos' cross-attention keys and values once per task, not once per example: the
loss and every hypernetwork gradient equal the per-example computation (the demos' states copied to each example,
as before), with prefixes or LoRA, with the main model's activations recomputed or not."""

from __future__ import annotations

import pytest
import torch

from hypergen.components.generators import AutoregressiveGenerator
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.targets.lora import LoraTarget
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.models import adapted
from hypergen.models.backbones import t5
from hypergen.models.hypernet import HyperNetwork
from hypergen.training.activation_recompute import wrap_block


def _hypernet(main, target):
    torch.manual_seed(1)
    hypernet = HyperNetwork(main, AutoregressiveGenerator(), LayerwiseMLPProjector(), target.slot_groups(main), 1)
    target.prepare(main)
    return hypernet


def _loss_and_grads(main, hypernet, target, per_task: bool):
    torch.manual_seed(3)
    demo_ids = torch.randint(3, 300, (3, 9))
    demo_mask = torch.ones_like(demo_ids)
    demo_mask[0, -3:] = 0  # padded demos: their mask columns must follow each example
    task_index = torch.tensor([2, 0, 0, 1, 2, 2, 0])  # uneven, unsorted: 7 examples of 3 tasks
    input_ids = torch.randint(3, 300, (7, 5))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0
    labels = torch.randint(3, 300, (7, 4))
    hypernet.zero_grad()
    task_params = hypernet(demo_ids, demo_mask)
    per_example = task_params.select(task_index)
    if not per_task:  # the demos' states copied to each example: the main model sees B rows of them
        per_example.encoder_states = per_example.encoder_states.index_select(0, task_index)
        per_example.encoder_mask = per_example.encoder_mask.index_select(0, task_index)
        per_example.example_rows = None
    out = adapted.adapted_forward(main, target, per_example, input_ids, attention_mask, labels, fusion=True)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in hypernet.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make_target", [
    lambda: PrefixTarget(length=2),
    lambda: LoraTarget(rank=2, targets=("q", "v"), attention=("self",)),
    lambda: LoraTarget(rank=2, targets=("k", "v"), attention=("self", "cross")),  # hooks on the cross k/v
], ids=["prefix", "lora-self", "lora-cross-kv"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
def test_per_task_fusion_equals_per_example_fusion(tiny_main, make_target, recompute):
    target = make_target()
    hypernet = _hypernet(tiny_main, target)
    if recompute:
        for block in t5.main_layers(tiny_main):
            wrap_block(block)
    logits_task, grads_task = _loss_and_grads(tiny_main, hypernet, target, per_task=True)
    logits_example, grads_example = _loss_and_grads(tiny_main, hypernet, target, per_task=False)
    torch.testing.assert_close(logits_task, logits_example, atol=1e-5, rtol=1e-5)
    assert grads_task.keys() == grads_example.keys()
    assert any(name.startswith("encoder.") for name in grads_task)  # the gradient reaches the demos' encoder
    for name in grads_task:
        torch.testing.assert_close(grads_task[name], grads_example[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_demos_are_projected_once_per_task(tiny_main):
    """With plain cross-attention projections, v sees T rows of demos (and B rows of queries), not B rows of
    demos; with a LoRA on the cross-attention keys it sees one row of [demos ; query] per example, as before."""
    for target, expected in ((PrefixTarget(length=2), [3, 7]),
                             (LoraTarget(rank=2, targets=("k",), attention=("cross",)), [7])):
        hypernet = _hypernet(tiny_main, target)
        projection = tiny_main.decoder.block[0].layer[1].EncDecAttention.v
        seen: list[int] = []
        plain = projection.forward
        projection.forward = lambda x: (seen.append(x.shape[0]), plain(x))[1]  # counts without a hook
        try:
            with torch.no_grad():
                task_params = hypernet(torch.randint(3, 300, (3, 9)), torch.ones(3, 9, dtype=torch.long))
                per_example = task_params.select(torch.tensor([0, 0, 1, 1, 2, 2, 2]))
                adapted.adapted_forward(tiny_main, target, per_example, torch.randint(3, 300, (7, 5)),
                                        torch.ones(7, 5, dtype=torch.long), torch.randint(3, 300, (7, 4)),
                                        fusion=True)
        finally:
            del projection.forward
        assert seen == expected, (type(target).__name__, seen)
