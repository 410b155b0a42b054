"""training.precision (the one place for bf16; distributed.precision, its old place, still read) and training.compile."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from hypergen.cli import main
from hypergen.errors import HypergenError, RecipeError
from hypergen.recipe import parse_recipe, recipe_schema
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import load_tasks
from hypergen.training import compile as compile_module

from tests.training.test_training import embedded_recipe, train


def _recipe(tmp_path, training: dict | None = None, distributed: dict | None = None) -> dict:
    data = embedded_recipe(tmp_path, steps=2)
    data["training"].update(training or {})
    if distributed is not None:
        data["distributed"] = distributed
    return data


@pytest.mark.parametrize("training, distributed, expected", [
    ({}, None, "fp32"),
    ({"precision": "bf16"}, None, "bf16"),
    ({"precision": "bf16"}, {"backend": "ddp"}, "bf16"),
    ({}, {"backend": "ddp", "precision": "bf16"}, "bf16"),
    ({"precision": "bf16"}, {"backend": "deepspeed", "zero_stage": 2, "precision": "bf16"}, "bf16"),
])
def test_precision_from_either_section(tmp_path, training, distributed, expected):
    recipe = parse_recipe(_recipe(tmp_path, training, distributed))
    assert recipe.training.precision == expected
    if recipe.distributed is not None:  # what a DeepSpeed engine reads agrees
        assert recipe.distributed.precision == expected


def test_precision_is_one_field(tmp_path):
    """The schema has one precision, training's; a recipe that sets it in distributed (its old place) resolves to
    training.precision alone, and reads back the same (a run written so resumes as the same recipe)."""
    schema = recipe_schema()["hypernetwork"]["$defs"]
    assert "precision" in schema["Training"]["properties"] and "precision" not in schema["Distributed"]["properties"]
    resolved = json.loads(parse_recipe(_recipe(tmp_path, {}, {"backend": "ddp", "precision": "bf16"})).model_dump_json())
    assert resolved["training"]["precision"] == "bf16" and "precision" not in resolved["distributed"]
    assert json.loads(parse_recipe(resolved).model_dump_json()) == resolved


def test_conflicting_precisions_name_both_fields(tmp_path):
    data = _recipe(tmp_path, {"precision": "bf16"}, {"backend": "ddp", "precision": "fp32"})
    with pytest.raises(RecipeError) as err:
        parse_recipe(data)
    message = str(err.value)
    assert "\n" not in message and "training.precision ('bf16')" in message and "distributed.precision ('fp32')" in message


def test_cli_refuses_conflicting_precisions(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(_recipe(tmp_path, {"precision": "fp32"}, {"backend": "ddp", "precision": "bf16"})))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2 and "distributed.precision" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_bf16_training_without_a_distributed_section(tmp_path):
    """training.precision bf16 alone trains under bf16 autocast: losses near fp32's, but not bit-equal."""
    losses = {}
    for precision in ("fp32", "bf16"):
        run = train(tmp_path, _recipe(tmp_path, {"precision": precision}), tmp_path / precision)
        losses[precision] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses["bf16"]) == 2
    assert losses["bf16"] != losses["fp32"]
    for a, b in zip(losses["bf16"], losses["fp32"]):
        assert abs(a - b) < 0.05 * abs(b)


def test_compile_that_cannot_work_names_the_field(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nmore lines")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(HypergenError) as err:
        compile_module.check_compile_works()
    message = str(err.value)
    assert message.startswith("training.compile:") and "CppCompileError" in message and "\n" not in message


@pytest.mark.slow  # inductor compiles each block's forward and backward: minutes on 2 shared cores
def test_compiled_blocks_compute_the_same(tmp_path):
    """compile_blocks compiles every block of the main model and the hypernetwork, in place: same state dict keys,
    same loss and gradients as uncompiled (to fp32 noise)."""
    data = _recipe(tmp_path)
    data["main_model"]["tiny"]["dropout_rate"] = 0.0  # compiled dropout draws other random numbers
    recipe = parse_recipe(data)
    tasks = load_tasks(recipe, "train")
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        assembled = assemble(recipe, torch.device("cpu"))
        method = assembled.method
        keys = set(method.module.state_dict())
        if compiled:
            assert compile_module.compile_blocks(method) == 2 + 2 + 2 + 1  # main 2+2, hypernet 2 enc + 1 dec
            assert set(method.module.state_dict()) == keys
        batch = assembled.collator([(tasks[0], tasks[0].instances[:2])])
        method.train()
        loss, _ = method.loss(batch, 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in method.module.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
