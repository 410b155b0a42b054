"""Prefix-Tuning and LoRA on FT-Few-Shot as recipes of the hypernetwork trainer: the ``learned_states`` generator
(no conditioning, no hypernetwork layers), ``data.demos_in_input``, and what trains, evaluates and adapts."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hypergen.recipe.builtin import builtin_recipe, method_label
from hypergen.cli import main
from hypergen.recipe import parse_recipe
from hypergen.runs.assembly import assemble
from tests.training.test_training import embedded_recipe, train

TINY = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def few_shot_recipe(tmp_path, name: str, steps: int = 2) -> dict:
    """The shipped recipe ``name`` on a tiny T5 and the test's embedded tasks, for ``steps`` steps."""
    recipe = json.loads(builtin_recipe(name).read_text())
    small = embedded_recipe(tmp_path, steps=steps)
    recipe["main_model"] = {"tiny": TINY}
    recipe["data"].update(path=small["data"]["path"], eval_instances_per_task=2, max_input_length=16)
    recipe["training"].update(steps=steps, batch_size=4, micro_batch_size=4, checkpoint_every=None, threads=None)
    recipe["evaluation"]["max_new_tokens"] = 4
    return recipe


def layerwise_heads_size(d: int, layers: int, width: int) -> int:
    """LayerNorm (weight, bias per layer) + shared Linear1 (d x d + d) + per-layer Linear2 (d x width + width)."""
    return 2 * layers * d + d * d + d + layers * (d * width + width)


@pytest.mark.parametrize("name", ["tiny_prefix_few_shot", "tiny_lora_few_shot"])
def test_only_the_peft_states_and_their_reparameterization_train(tmp_path, name):
    recipe = parse_recipe(few_shot_recipe(tmp_path, name))
    method = assemble(recipe, torch.device("cpu")).method
    module = method.module
    assert method.demos_in_input and method.train_demos_in_input == 1.0 and not method.fusion
    assert {key.split(".")[0] for key in module.state_dict()} == {"generator", "projector"}  # no copied layers
    d, rows = 32, 8  # the hypernetwork width is the main model's; p = 8 (prefix length) or r = 8 (LoRA rank)
    width = 8 * 4  # heads x d_kv: the prefix's k/v width, and LoRA's q/v output width (its input width is d = 32)
    if name == "tiny_prefix_few_shot":  # k and v of the 2 encoder and 2 decoder self-attention layers
        heads = 4 * layerwise_heads_size(d, 2, width)
    else:  # A (r x 32) and B^T (r x 32) of q and v in the encoder and decoder self-attention
        heads = 8 * layerwise_heads_size(d, 2, 32)
    z = (2 + 2) * rows * d  # p rows for each of the 4 layers
    assert module.generator.z.shape == (4 * rows, d)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == z + heads
    assert not any(p.requires_grad for p in method.main_model.parameters())
    assert method_label(few_shot_recipe(tmp_path, name)) == (
        "Prefix-Tuning on FT-Few-Shot" if "prefix" in name else "LoRA on FT-Few-Shot")


def test_learned_states_ignore_the_demos_and_the_main_input_holds_them(tmp_path):
    recipe = parse_recipe(few_shot_recipe(tmp_path, "tiny_prefix_few_shot"))
    assembled = assemble(recipe, torch.device("cpu"))
    module = assembled.method.module
    a = module(torch.randint(3, 200, (2, 9)), torch.ones(2, 9, dtype=torch.long))
    b = module(torch.randint(3, 200, (2, 5)), torch.zeros(2, 5, dtype=torch.long))
    assert a.encoder_states.shape == (2, 0, 32)  # nothing encoded
    for group in a.params:
        torch.testing.assert_close(a.params[group], b.params[group], rtol=0, atol=0)
        torch.testing.assert_close(a.params[group][0], a.params[group][1], rtol=0, atol=0)  # every task the same
    from hypergen.runs.tasks import load_tasks

    task = load_tasks(recipe, "train")[0]
    collator = assembled.collator
    with_demos = collator([(task, task.instances[:1])], demos_in_input=assembled.method.train_demos_in_input)
    alone = collator([(task, task.instances[:1])])
    demos = collator.tokenizer(collator.demos(task), add_special_tokens=False)["input_ids"]
    assert with_demos.input_ids[0, : len(demos)].tolist() == demos
    assert with_demos.attention_mask.sum() > alone.attention_mask.sum()


def test_train_eval_and_adapt_one_adapter_for_every_task(tmp_path):
    recipe = few_shot_recipe(tmp_path, "tiny_lora_few_shot")
    run = train(tmp_path, recipe, tmp_path / "run")
    result = invoke("eval", "--run", run, "--quiet")
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["overall"]["instances"] > 0
    data = tmp_path / "embedded"
    names = (data / "splits" / "default" / "test_tasks.txt").read_text().split()[:2]
    weights = []
    for name in names:
        result = invoke("adapt", "--run", run, "--task", data / "tasks" / f"{name}.json", "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        weights.append(load_file(str(tmp_path / name / "adapter_model.safetensors")))
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


def test_fusion_with_a_generator_that_reads_no_demos_is_refused(tmp_path):
    recipe = few_shot_recipe(tmp_path, "tiny_prefix_few_shot")
    recipe["hypernetwork"]["fusion_in_decoder"] = True
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recipe))
    result = invoke("train", path, "-o", tmp_path / "run", "--quiet")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "hypernetwork.fusion_in_decoder" in result.output and "'learned_states' reads no demos" in result.output
    assert not (tmp_path / "run").exists()


def test_a_finetune_recipe_sets_few_shot_not_demos_in_input(tmp_path):
    recipe = {"kind": "finetune", "main_model": {"tiny": TINY}, **{"data": embedded_recipe(tmp_path)["data"]}}
    recipe["data"]["demos_in_input"] = True
    path = tmp_path / "ft.json"
    path.write_text(json.dumps(recipe))
    result = invoke("recipes", "validate", path)
    assert result.exit_code == 2 and "data.demos_in_input" in result.output and "few_shot" in result.output
