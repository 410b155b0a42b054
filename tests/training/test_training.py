"""Trainer, checkpoints and main-model loading: exact resume, checksum fallback, local folders, optimizers."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hypergen.cli import main
from hypergen.errors import HypergenError, RecipeError
from hypergen.models.main import load_main_model, save_main_model
from hypergen.recipe import MainModel, TinyT5, Training
from hypergen.training.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from hypergen.training.optim import linear_schedule, make_optimizer


def embedded_recipe(tmp_path, steps=6) -> dict:
    return {
        "main_model": {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                                "num_heads": 4, "dropout_rate": 0.1}},
        "hypernetwork": {"decoder_layers": 1, "regularizers": [{"name": "local_consistency", "alpha": 2.0}]},
        "peft": {"name": "prefix", "length": 2},
        "data": {"source": "embedded", "path": str(tmp_path / "embedded"), "num_positive": 4,
                 "demo_style": "compact", "max_demo_length": 64, "max_input_length": 16, "max_target_length": 8,
                 "queries_per_task": 2, "eval_instances_per_task": 2},
        "training": {"steps": steps, "batch_size": 8, "micro_batch_size": 4, "optimizer": "adamw", "lr": 1e-3,
                     "log_every": 1, "checkpoint_every": 3, "keep_checkpoints": 5, "seed": 3},
    }


def train(tmp_path, recipe: dict, out, *extra):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(out), "--quiet", "--no-eval", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_resume_reproduces_uninterrupted_run(tmp_path):
    recipe = embedded_recipe(tmp_path)
    full = train(tmp_path, recipe, tmp_path / "full")
    # an interrupted copy: only the step-3 checkpoint survived, nothing after it
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    (cut / "hypernetwork.safetensors").unlink()
    for folder in list_checkpoints(cut):
        if not folder.name.endswith("0003"):
            shutil.rmtree(folder)
    train(tmp_path, recipe, cut, "--resume")
    a, b = load_file(str(full / "hypernetwork.safetensors")), load_file(str(cut / "hypernetwork.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert (full / "metrics.jsonl").read_text() .count("\n") == (cut / "metrics.jsonl").read_text().count("\n")
    losses = lambda run: [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses(full) == losses(cut)


def test_first_iteration_has_no_consistency_under_accumulation(tmp_path):
    """Issue 14's measurement: a 1-step run with batch 4 in micro-batches of 2 logged cst = 0.122 for the first
    iteration (its second micro-batch was compared with its first); the paper has L_cst(xi^(1)) = 0. The second
    step compares with the first and is not 0."""
    recipe = embedded_recipe(tmp_path, steps=2)
    recipe["training"].update({"batch_size": 4, "micro_batch_size": 2})
    run = train(tmp_path, recipe, tmp_path / "run")
    cst = [json.loads(x)["local_consistency"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert cst[0] == 0.0 and cst[1] > 0.0


def test_resume_refuses_a_different_recipe(tmp_path):
    recipe = embedded_recipe(tmp_path, steps=1)
    out = train(tmp_path, recipe, tmp_path / "run")
    recipe["training"]["lr"] = 0.1
    path = tmp_path / "other.json"
    path.write_text(json.dumps(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(out), "--resume", "--quiet"])
    assert result.exit_code == 2 and "different recipe" in result.output


def test_corrupted_checkpoint_falls_back_to_previous(tmp_path):
    state = {"w": torch.arange(4.0)}
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"w": state["w"] * step}, {"lr": 0.1}, {"step": step}, keep=3)
    newest = list_checkpoints(tmp_path)[-1]
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="checksum"):
        folder, model_state, _, tree = load_latest_checkpoint(tmp_path)
    assert folder.name == "step-00000001" and tree == {"step": 1}
    torch.testing.assert_close(model_state["w"], torch.arange(4.0))


def test_checkpoints_keep_the_last_k(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {}, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary folders left


def test_main_model_from_local_folder(tmp_path):
    model, tokenizer = load_main_model(MainModel(tiny=TinyT5(d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                              num_decoder_layers=1, num_heads=2)))
    save_main_model(model, tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer = load_main_model(MainModel(name_or_path=str(tmp_path / "model")))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    ids = loaded_tokenizer(["abc"], return_tensors="pt").input_ids
    assert ids.tolist() == tokenizer(["abc"], return_tensors="pt").input_ids.tolist()
    torch.testing.assert_close(loaded(input_ids=ids, decoder_input_ids=ids).logits,
                               model(input_ids=ids, decoder_input_ids=ids).logits)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HypergenError, match="config.json"):
        load_main_model(MainModel(name_or_path=str(tmp_path / "empty")))
    with pytest.raises(HypergenError, match="does not exist"):
        load_main_model(MainModel(name_or_path=str(tmp_path / "missing")))


@pytest.mark.parametrize("name", ["adamw", "adam8bit"])
def test_optimizers_take_a_step(name):
    weight = torch.nn.Parameter(torch.ones(64, 64))
    optimizer = make_optimizer([weight], Training(optimizer=name, lr=1e-2))
    (weight ** 2).sum().backward()
    optimizer.step()
    assert weight.detach().max() < 1.0


def test_adam8bit_without_bitsandbytes_fails_at_once_naming_the_setting(tmp_path, monkeypatch):
    """Never a silent AdamW: where bitsandbytes cannot be imported, asking for adam8bit is a one-line error naming
    training.optimizer (exit status 2), before any run folder is written."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(RecipeError, match="^training.optimizer: 'adam8bit' needs bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.ones(4))], Training(optimizer="adam8bit"))
    recipe = embedded_recipe(tmp_path, steps=1)
    recipe["training"]["optimizer"] = "adam8bit"
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--quiet", "--no-eval"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}: training.optimizer: 'adam8bit' needs bitsandbytes")
    assert result.output.count("\n") == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, ran", [("adamw", "torch.optim.adamw.AdamW"),
                                       ("adam8bit", "bitsandbytes.optim.adam.Adam8bit")])
def test_the_run_folder_records_the_optimizer_that_ran(tmp_path, name, ran):
    recipe = embedded_recipe(tmp_path, steps=1)
    recipe["training"]["optimizer"] = name
    run = train(tmp_path, recipe, tmp_path / "run")
    assert json.loads((run / "run_info.json").read_text()) == {"optimizer": ran, "backend": "torch"}


def test_linear_schedule_warms_up_then_decays():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_schedule(optimizer, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_the_deepspeed_launchers_local_rank_argument_is_accepted(tmp_path):
    """`deepspeed --num_gpus N $(which hypergen) train R` appends --local_rank=N; the rank comes from LOCAL_RANK."""
    run = train(tmp_path, embedded_recipe(tmp_path, steps=1), tmp_path / "run", "--local_rank=0")
    assert (run / "hypernetwork.safetensors").is_file()
