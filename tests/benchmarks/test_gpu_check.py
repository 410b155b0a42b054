"""benchmarks/gpu_check.py: the recipes it runs on a GPU, and its CPU smoke mode end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from hypergen.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case, d_model, layers, batch, deepspeed", [
    ("t5-large", 1024, 24, 256, False), ("t5-xl", 2048, 24, 256, True), ("base", 512, 6, 128, False)])
def test_gpu_cases_have_the_recipes_shapes(tmp_path, case, d_model, layers, batch, deepspeed):
    recipe = parse_recipe(_gpu_check().case_recipe(case, tmp_path, steps=4, smoke=False))
    tiny, training = recipe.main_model.tiny, recipe.training
    assert (tiny.d_model, tiny.num_layers, tiny.num_decoder_layers) == (d_model, layers, layers)
    assert (training.batch_size, training.precision, training.optimizer, training.steps) == (batch, "bf16",
                                                                                            "adam8bit", 4)
    assert training.batch_size // training.micro_batch_size > 1  # by accumulation
    if deepspeed:
        assert (recipe.distributed.backend, recipe.distributed.zero_stage) == ("deepspeed", 2)
        assert training.checkpointing.main_model and training.checkpointing.hypernetwork
    else:
        assert recipe.distributed is None


@pytest.mark.slow  # a real (tiny) training run in a child process: about 1-2 minutes on 2 shared cores
def test_cpu_smoke_run_records_a_row(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--cases",
                           "base", "--steps", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "CPU smoke run" in text
    row = next(line for line in text.splitlines() if line.startswith("| base |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "cpu" and cells[4] == "4 (2)" and float(cells[6]) > 0 and float(cells[11]) > 0
