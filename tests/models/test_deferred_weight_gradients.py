"""Deferred weight gradients: a FewRowsLinear used many times in one pass gets the same gradients as nn.Linear,
computed as one product, accumulated into ``.grad`` once (so the hooks distributed training relies on fire once);
HART's decoding steps use it and every hypernetwork gradient stays what it was."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hypergen.components import generators
from hypergen.components.generators import AutoregressiveGenerator
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.models import few_rows
from hypergen.models.few_rows import FewRowsLinear, deferred_weight_gradients
from hypergen.models.hypernet import HyperNetwork


class _WeightShapedProducts(TorchDispatchMode):
    """Counts the matrix products whose result has a weight's shape (40 x 24 or 24 x 40): the weight gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm) and tuple(out.shape) in ((40, 24), (24, 40)):
            self.count += 1
        return out


def _chain(first: nn.Linear, second: nn.Linear, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` applications of x -> x + second(tanh(first(x))), then one call with many rows (the plain path)."""
    for _ in range(steps):
        x = x + second(torch.tanh(first(x)))
    wide = x.repeat(40, 1)  # 40 * rows > MAX_ROWS: nn.Linear's own product, accumulated by autograd as usual
    return x.square().sum() + second(torch.tanh(first(wide))).sum()


def record_deferred_products(monkeypatch) -> list[tuple[int, int]]:
    """From now on, each deferred weight-gradient product as (how many products it stacks, their rows N), appended
    as it is computed."""
    products: list[tuple[int, int]] = []
    original = few_rows._DeferredWeightGradient.backward

    def spy(ctx, grad):
        products.append((len(ctx.bucket.grads), sum(g.shape[0] for g in ctx.bucket.grads)))
        return original(ctx, grad)

    monkeypatch.setattr(few_rows._DeferredWeightGradient, "backward", staticmethod(spy))
    return products


def without_deferral(monkeypatch) -> None:
    """From now on, the generator's decoding steps leave their weight gradients to autograd (the reference)."""
    monkeypatch.setattr(generators, "deferred_weight_gradients", lambda *modules: contextlib.nullcontext(0))


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_equal_nn_linear_and_each_weight_is_accumulated_once(bias, monkeypatch):
    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    torch.manual_seed(0)
    reference = [nn.Linear(24, 40, bias=bias), nn.Linear(40, 24, bias=bias)]
    few = [FewRowsLinear(24, 40, bias=bias), FewRowsLinear(40, 24, bias=bias)]
    for f, r in zip(few, reference):
        f.load_state_dict(r.state_dict())
    accumulations = {id(p): 0 for layer in few + reference for p in layer.parameters()}

    def count(parameter):
        accumulations[id(parameter)] += 1

    for layer in few + reference:
        layer.weight.register_post_accumulate_grad_hook(count)
    x = torch.randn(3, 24, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with deferred_weight_gradients(nn.ModuleList(few)) as deferred:
        loss = _chain(*few, x, steps=5)
    assert deferred == 2
    assert not any(hasattr(f, few_rows._BUCKET) for f in few)  # the context leaves nothing behind
    with _WeightShapedProducts() as products:
        loss.backward()
    with _WeightShapedProducts() as reference_products:
        _chain(*reference, x_ref, steps=5).backward()
    assert products.count == 2 * 2 and reference_products.count == 2 * 6  # per weight: stacked + wide, or 5 + 1
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for f, r in zip(few, reference):
        torch.testing.assert_close(f.weight.grad, r.weight.grad, atol=1e-4, rtol=1e-4)  # |grad| up to ~600
        if bias:
            torch.testing.assert_close(f.bias.grad, r.bias.grad, atol=1e-5, rtol=1e-5)
        assert accumulations[id(f.weight)] == accumulations[id(r.weight)] == 1  # DDP's/DeepSpeed's hooks: once


def test_a_second_pass_accumulates_onto_the_first(monkeypatch):
    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    torch.manual_seed(1)
    few, reference = FewRowsLinear(8, 8), nn.Linear(8, 8)
    few.load_state_dict(reference.state_dict())
    for _ in range(2):  # gradient accumulation over two micro-batches
        x = torch.randn(2, 8)
        with deferred_weight_gradients(few):
            out = few(few(x))
        out.sum().backward()
        reference(reference(x)).sum().backward()
    torch.testing.assert_close(few.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-5)


def test_takes_no_part_without_gradients_or_for_frozen_weights(monkeypatch):
    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    trained, frozen = FewRowsLinear(4, 4), FewRowsLinear(4, 4).requires_grad_(False)
    with torch.no_grad(), deferred_weight_gradients(trained) as deferred:
        trained(torch.randn(2, 4))
    assert deferred == 0
    with deferred_weight_gradients(nn.ModuleList([trained, frozen])) as deferred:
        assert deferred == 1 and not hasattr(frozen, few_rows._BUCKET)


def test_hart_decoding_steps_defer_and_every_hypernetwork_gradient_is_unchanged(tiny_main, monkeypatch):
    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)  # the tiny decoder's weights take the few-rows path
    torch.manual_seed(0)
    target = PrefixTarget(length=2)
    hypernet = HyperNetwork(tiny_main, AutoregressiveGenerator(), LayerwiseMLPProjector(),
                            target.slot_groups(tiny_main), 1)
    hypernet.eval()  # no dropout: both passes see the same numbers
    demo_ids = torch.randint(3, 200, (2, 9))
    demo_mask = torch.ones_like(demo_ids)
    def gradients():
        hypernet.zero_grad(set_to_none=True)
        out = hypernet(demo_ids, demo_mask)
        sum((v ** 2).sum() for v in out.params.values()).backward()
        return {n: p.grad.clone() for n, p in hypernet.named_parameters() if p.grad is not None}

    products = record_deferred_products(monkeypatch)
    deferred = gradients()
    # one product per weight: 3 steps x 2 tasks x 2 tokens, or the 2 x 9 demo tokens (cross-attention keys/values)
    assert {rows for _, rows in products} == {3 * 2 * 2, 2 * 9}
    without_deferral(monkeypatch)
    plain = gradients()
    assert deferred.keys() == plain.keys() and len(products) > 0
    for name in plain:
        torch.testing.assert_close(deferred[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_causal_hypernetwork_with_or_without_recomputed_steps_keeps_its_gradients(monkeypatch, checkpoint):
    """A causal hypernetwork's deferred gradients are the plain ones, also with ``checkpoint_decoder`` on (the
    backbones recompute only uncached passes, so the cached steps the deferral covers are never re-run outside
    it)."""
    from tests.models.test_causal import causal_model, demos, hypernet

    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    net = hypernet(causal_model(), AutoregressiveGenerator())
    net.checkpoint_decoder = checkpoint
    demo_ids, demo_mask = demos()

    def gradients():
        net.zero_grad(set_to_none=True)
        sum((v ** 2).sum() for v in net(demo_ids, demo_mask).params.values()).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    deferred = gradients()
    without_deferral(monkeypatch)
    monkeypatch.setattr(net, "checkpoint_decoder", False)
    plain = gradients()
    assert deferred.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(deferred[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
