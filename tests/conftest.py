"""Shared fixtures: a tiny frozen T5 main model and the path of the real S-NI sample data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hypergen.models.main import freeze, tiny_t5
from hypergen.recipe import TinyT5

REPO = Path(__file__).resolve().parents[1]
SNI_ALGO = REPO.parent / "shared" / "data" / "sni-algo"


@pytest.fixture
def tiny_main():
    torch.manual_seed(0)
    model = tiny_t5(TinyT5(d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=2, num_heads=4), 384)
    freeze(model)
    return model


@pytest.fixture
def sni_algo() -> Path:
    if not (SNI_ALGO / "tasks").is_dir():
        pytest.skip(f"real S-NI sample data not found at {SNI_ALGO}")
    return SNI_ALGO
