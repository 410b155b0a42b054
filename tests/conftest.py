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


@pytest.fixture
def micro_study(tmp_path):
    """``micro_study(steps, *setup)``: the command line that runs ``benchmarks/reproduce.py --quick`` at a micro
    size (a d_model-32 T5, batch 8, the embedded family written under ``tmp_path``), its quick embedded profile
    ``plan.Steps(<steps>)`` (e.g. "main=2, train=2, finetune=1, per_task=1, eval_instances=1"), and more
    Python statements ``setup`` run before it (e.g. "plan.VALIDATION_FRACTION['embedded'] = 0.002"). Append the
    study's options (--out, --methods, ...)."""
    import sys

    script = REPO / "benchmarks" / "reproduce.py"

    def command(steps: str, *setup: str) -> list[str]:
        micro = ("import sys, runpy, pathlib; import hypergen.runs.tasks; from hypergen.reproduce import plan; "
                 f"hypergen.runs.tasks.EMBEDDED_DIR = pathlib.Path({str(tmp_path / 'embedded')!r}); "
                 "plan.SCALES['tiny'] = plan.Scale('tiny', dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, "
                 "num_decoder_layers=2, num_heads=4), decoder_layers=1, prefix_length=2, batch_size=8, "
                 "hyper_lr=1e-3, main_lr=1e-3); "
                 f"plan.PROFILES['quick']['embedded'] = plan.Steps({steps}); "
                 + "".join(f"{statement}; " for statement in setup)
                 + f"sys.argv = [{str(script)!r}] + sys.argv[1:]; runpy.run_path({str(script)!r}, run_name='__main__')")
        return [sys.executable, "-c", micro, "--quick", "--data", "embedded", "--device", "cpu"]

    return command
