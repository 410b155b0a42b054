"""`hypergen check-adapter` / `hypergen.adapters.serving.check_vllm_compatible`: an exported causal LoRA folder passes vLLM's
documented loader constraints; each hand-made corruption is named (issue 28)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hypergen.cli import main
from hypergen.adapters.serving import MAX_LORA_RANKS, check_vllm_compatible, smallest_max_lora_rank
from tests.models.test_causal import causal_recipe
from tests.training.test_training import embedded_recipe, train


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def adapt(run: Path, root: Path, out: Path) -> Path:
    task = sorted((root / "embedded" / "tasks").glob("*.json"))[0]
    result = invoke("adapt", "--run", run, "--task", task, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def causal_lora(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    return adapt(train(root, causal_recipe(root, steps=1), root / "run"), root, root / "adapter")


def test_exported_causal_lora_is_servable(causal_lora):
    assert check_vllm_compatible(causal_lora) == []
    config = json.loads((causal_lora / "adapter_config.json").read_text())
    settings = json.loads((causal_lora / "hypergen_adapter.json").read_text())
    assert config["r"] == settings["peft"]["rank"] == 2  # the recipe's rank, not padded
    result = invoke("check-adapter", causal_lora)
    assert result.exit_code == 0 and "--max-lora-rank 8" in result.output, result.output
    assert [smallest_max_lora_rank(r) for r in (1, 2, 8, 9, 300, 512, 513)] == [1, 8, 8, 16, 320, 512, None]
    assert MAX_LORA_RANKS[-1] == 512


def corrupt_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def corrupt_weights(folder: Path, change) -> None:
    path = folder / "adapter_model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def first_key(state: dict, slot: str) -> str:
    return sorted(k for k in state if f"lora_{slot}" in k)[0]


def pad_rank(folder: Path, rank: int, recipe_rank: int) -> None:
    """Zero-pad every LoRA pair from rank 2 to ``rank`` (the same update) and record ``recipe_rank`` as the run's."""
    def pad(state: dict) -> None:
        for key, value in list(state.items()):
            extra = torch.zeros(rank - 2, value.shape[1]) if "lora_A" in key else torch.zeros(value.shape[0], rank - 2)
            state[key] = torch.cat([value, extra], dim=0 if "lora_A" in key else 1)

    corrupt_config(folder, r=rank)
    corrupt_weights(folder, pad)
    path = folder / "hypergen_adapter.json"
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, "peft": {**settings["peft"], "rank": recipe_rank}}))


CORRUPTIONS = {
    "r = 600 exceeds vLLM's largest --max-lora-rank 512": lambda f: pad_rank(f, 600, 600),
    "r = 4 but the run's recipe has rank 2": lambda f: pad_rank(f, 4, 2),
    "use_dora is true": lambda f: corrupt_config(f, use_dora=True),
    "bias is 'all'": lambda f: corrupt_config(f, bias="all"),
    "modules_to_save ['lm_head']": lambda f: corrupt_config(f, modules_to_save=["lm_head"]),
    "target_modules ['q']": lambda f: corrupt_config(f, target_modules=["q", "v_proj"]),
    "task_type is 'SEQ_2_SEQ_LM'": lambda f: corrupt_config(f, task_type="SEQ_2_SEQ_LM"),
    "key 'base_model.model.lm_head.weight'": lambda f: corrupt_weights(
        f, lambda s: s.update({"base_model.model.lm_head.weight": torch.zeros(4, 4)})),
    "lora_B.bias": lambda f: corrupt_weights(
        f, lambda s: s.update({first_key(s, "B").replace("weight", "bias"): torch.zeros(4)})),
    "has lora_A without lora_B": lambda f: corrupt_weights(f, lambda s: s.pop(first_key(s, "B"))),
    "need lora_A (2, 32)": lambda f: corrupt_weights(
        f, lambda s: s.update({first_key(s, "A"): torch.zeros(2, 31)})),
    "fusion-in-decoder": lambda f: save_file({"states": torch.zeros(3, 32), "mask": torch.ones(3)},
                                             str(f / "fusion.safetensors")),
    "lacks adapter_model.safetensors": lambda f: (f / "adapter_model.safetensors").unlink(),
    "a prefix adapter is not servable": lambda f: (f / "hypergen_adapter.json").write_text(
        json.dumps({"hypergen_adapter": "prefix"})),
}


@pytest.mark.parametrize("problem", sorted(CORRUPTIONS))
def test_each_corruption_is_named(causal_lora, tmp_path, problem):
    copy = shutil.copytree(causal_lora, tmp_path / "copy")
    CORRUPTIONS[problem](copy)
    problems = check_vllm_compatible(copy)
    assert len(problems) == 1 and problem in problems[0], problems
    result = invoke("check-adapter", copy)
    assert result.exit_code == 2 and problem in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_t5_lora_with_fusion_is_named_not_servable(tmp_path):
    recipe = embedded_recipe(tmp_path, steps=1)
    recipe["peft"] = {"name": "lora", "rank": 2}
    recipe["training"]["checkpoint_every"] = None
    folder = adapt(train(tmp_path, recipe, tmp_path / "run"), tmp_path, tmp_path / "adapter")
    problems = "\n".join(check_vllm_compatible(folder))
    assert "SEQ_2_SEQ_LM" in problems and "fusion-in-decoder" in problems and "is not a projection" in problems
