"""FewRowsLinear: the same outputs and gradients as nn.Linear, whichever way it computes them; the hypernetwork
decoder uses it without changing its state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hypergen.components.generators import AutoregressiveGenerator
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.models import few_rows
from hypergen.models.few_rows import FewRowsLinear, use_few_rows_linears
from hypergen.models.hypernet import HyperNetwork


@pytest.mark.parametrize("shape", [(2, 24), (1, 3, 24), (4, 16, 24), (5, 20, 24)], ids=str)  # 2, 3, 64, 100 rows
@pytest.mark.parametrize("bias", [True, False])
def test_equals_nn_linear_in_outputs_and_gradients(shape, bias, monkeypatch):
    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)  # small weights, so that every path is taken here
    torch.manual_seed(0)
    reference = nn.Linear(24, 40, bias=bias)
    few = FewRowsLinear(24, 40, bias=bias)
    few.load_state_dict(reference.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = few(x), reference(x_ref)
    assert out.shape == out_ref.shape == (*shape[:-1], 40) and out.is_contiguous()
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(few.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-5)
    if bias:
        torch.testing.assert_close(few.bias.grad, reference.bias.grad, atol=1e-5, rtol=1e-5)


def test_takes_the_weight_rows_first_product_only_for_few_rows(monkeypatch):
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(few_rows.torch, "mm", lambda a, b: (calls.append(tuple(b.shape)), real_mm(a, b))[1])
    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 32)
    layer = FewRowsLinear(8, 4)
    layer(torch.randn(3, 2, 8))
    layer(torch.randn(few_rows.MAX_ROWS + 1, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 8))
    FewRowsLinear(4, 4)(torch.randn(2, 4))  # 16 weight entries: below MIN_WEIGHT_ELEMENTS
    assert calls == [(8, 6)]  # 6 rows: W @ x^T; more than MAX_ROWS, autocast, a small weight: nn.Linear's own path


def test_the_hypernetwork_decoder_uses_it_and_keeps_its_state_dict(tiny_main):
    target = PrefixTarget(length=2)
    hypernet = HyperNetwork(tiny_main, AutoregressiveGenerator(), LayerwiseMLPProjector(),
                            target.slot_groups(tiny_main), 1)
    linears = [m for m in hypernet.decoder.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is FewRowsLinear for m in linears)
    assert all(type(m) is nn.Linear for m in tiny_main.modules() if isinstance(m, nn.Linear))  # the main model's own
    plain = nn.Sequential(nn.Linear(3, 3))
    assert use_few_rows_linears(plain) == 1 and set(plain.state_dict()) == {"0.weight", "0.bias"}
    reloaded = HyperNetwork(tiny_main, AutoregressiveGenerator(), LayerwiseMLPProjector(),
                            target.slot_groups(tiny_main), 1)
    reloaded.load_state_dict(hypernet.state_dict())  # strict: the same keys
