"""Gradient checkpointing (same losses and gradients) and multi-process training (2 CPU processes, gloo).

The two-process tests launch ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m hypergen.cli
train ...``; they take some tens of seconds and are marked ``distributed`` (deselect with ``-m "not
distributed"``).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hypergen.cli import main
from hypergen.data.sampling import TaskSampler
from hypergen.errors import HypergenError, RecipeError
from hypergen.recipe import parse_recipe
from hypergen.runs import assemble, load_tasks
from hypergen.training.checkpoint import list_checkpoints
from hypergen.training.checkpointing import enable_gradient_checkpointing
from hypergen.training.distributed import accumulation_steps, setup
from hypergen.training.trainer import Trainer

from test_training import embedded_recipe


def plain_recipe(tmp_path, steps=4) -> dict:
    """The tiny embedded recipe without dropout or stateful regularizers (so the sampled examples alone decide)."""
    recipe = embedded_recipe(tmp_path, steps)
    recipe["main_model"]["tiny"]["dropout_rate"] = 0.0
    recipe["hypernetwork"]["regularizers"] = []
    recipe["training"].update({"batch_size": 8, "micro_batch_size": 2, "checkpoint_every": 2, "threads": 1,
                               "device": "cpu"})
    return recipe


# -- gradient checkpointing ----------------------------------------------------------------------------------------
def _loss_and_grads(recipe_data, hyper: bool, main_model: bool):
    recipe = parse_recipe(copy.deepcopy(recipe_data))
    random.seed(0)
    torch.manual_seed(0)
    assembled = assemble(recipe, torch.device("cpu"))
    enable_gradient_checkpointing(assembled.method, hyper, main_model)
    method = assembled.method
    counts = {"main": 0, "hyper_encoder": 0, "hyper_decoder": 0}  # calls of a block's first layer: 2 = recomputed
    watched = {"main": method.main_model.encoder.block[0], "hyper_encoder": method.module.encoder.block[0],
               "hyper_decoder": method.module.decoder.block[0]}
    for key, block in watched.items():
        block.layer[0].register_forward_hook(lambda *_, key=key: counts.__setitem__(key, counts[key] + 1))
    sampler = TaskSampler(load_tasks(recipe, "train"), 5, recipe.data.queries_per_task)
    batch = assembled.collator(sampler.next_batch(2), demos_in_input=0.0)
    assembled.method.train()
    loss, _ = assembled.method.loss(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in assembled.method.module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, counts


@pytest.mark.parametrize("generator,peft", [
    ({"name": "autoregressive"}, {"name": "prefix", "length": 2}),
    ({"name": "autoregressive", "use_cache": False}, {"name": "prefix", "length": 2}),
    ({"name": "non_autoregressive"}, {"name": "prefix", "length": 2}),
    ({"name": "autoregressive"}, {"name": "lora", "rank": 2}),
])
def test_gradient_checkpointing_keeps_losses_and_gradients(tmp_path, generator, peft):
    data = plain_recipe(tmp_path)
    data["hypernetwork"]["generator"] = generator
    data["hypernetwork"]["regularizers"] = [{"name": "local_consistency", "alpha": 2.0}]
    data["peft"] = peft
    reference_loss, reference, plain = _loss_and_grads(data, False, False)
    for hyper, main_model in ((True, False), (False, True), (True, True)):
        loss, grads, counts = _loss_and_grads(data, hyper, main_model)
        # checkpointed blocks ran twice (forward, then recomputed in backward); HART's cached decoder steps not
        cached = generator["name"] == "autoregressive" and generator.get("use_cache", True)
        assert counts["main"] == plain["main"] * (2 if main_model else 1)
        assert counts["hyper_encoder"] == plain["hyper_encoder"] * (2 if hyper else 1)
        assert counts["hyper_decoder"] == plain["hyper_decoder"] * (2 if hyper and not cached else 1)
        torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-5)
        assert grads.keys() == reference.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], reference[name], rtol=1e-5, atol=1e-5, msg=name)


def test_checkpointing_switches_in_the_recipe(tmp_path):
    data = plain_recipe(tmp_path)
    data["training"]["gradient_checkpointing"] = True
    both = parse_recipe(data).training.checkpointing
    assert both.hypernetwork and both.main_model
    data["training"]["gradient_checkpointing"] = {"hypernetwork": True}
    one = parse_recipe(data).training.checkpointing
    assert one.hypernetwork and not one.main_model
    data["training"]["gradient_checkpointing"] = {"encoder": True}
    with pytest.raises(RecipeError, match="gradient_checkpointing"):
        parse_recipe(data)


def test_distributed_section_is_validated(tmp_path, monkeypatch):
    data = plain_recipe(tmp_path)
    data["distributed"] = {"backend": "ddp", "zero_stage": 2}
    with pytest.raises(RecipeError, match="zero_stage"):
        parse_recipe(data)
    data["distributed"] = {"backend": "deepspeed", "zero_stage": 2, "precision": "bf16"}
    with pytest.raises(RecipeError, match="deepspeed"):
        setup(parse_recipe(data).distributed)
    assert accumulation_steps(256, 8, 8) == 4 and accumulation_steps(8, 2, 1) == 4
    with pytest.raises(HypergenError, match="multiple of micro_batch_size x processes"):
        accumulation_steps(8, 2, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    data.pop("distributed")
    with pytest.raises(RecipeError, match="no 'distributed' section"):
        setup(parse_recipe(data).distributed)


def test_single_process_with_distributed_section_and_bf16(tmp_path):
    data = plain_recipe(tmp_path, steps=2)
    data["distributed"] = {"backend": "ddp", "precision": "bf16"}
    data["training"]["gradient_checkpointing"] = True
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--quiet", "--no-eval"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(isinstance(v, float) for v in losses)


# -- two processes -------------------------------------------------------------------------------------------------
def torchrun_train(recipe_path, out, *extra) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "hypergen.cli", "train", str(recipe_path), "-o", str(out), "--quiet", "--no-eval", *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    data = plain_recipe(tmp_path)
    data["distributed"] = {"backend": "ddp"}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    torchrun_train(path, tmp_path / "run")
    return tmp_path, data, path, tmp_path / "run"


class RankInterleaved:
    """The union of the ranks' micro-batches in one process: per step, rank 0's micro-batches then rank 1's."""

    def __init__(self, samplers, per_rank: int):
        self.samplers, self.per_rank, self.calls = samplers, per_rank, 0
        self.queries_per_task = samplers[0].queries_per_task

    def next_batch(self, num_tasks):
        sampler = self.samplers[(self.calls // self.per_rank) % len(self.samplers)]
        self.calls += 1
        return sampler.next_batch(num_tasks)


@pytest.mark.distributed
def test_two_processes_match_one_process_on_the_same_examples(two_process_run):
    """Two gloo processes (2 micro-batches of 2 examples each per step) against one process that runs the same 4
    micro-batches per step (rank 0's then rank 1's, from samplers seeded seed+0 and seed+1).

    Tolerance 1e-5 relative on the losses and 1e-4 absolute on the weights: the gradients are the same sums in a
    different order (per-process means, then the all-reduce), so they differ in the last float32 bits, and four
    Adam steps carry that along; anything else (wrong scaling, wrong examples, missing all-reduce) moves the
    losses by far more than that."""
    tmp_path, data, _, run = two_process_run
    recipe = parse_recipe({k: v for k, v in data.items() if k != "distributed"})
    random.seed(recipe.training.seed)
    torch.manual_seed(recipe.training.seed)
    assembled = assemble(recipe, torch.device("cpu"))
    tasks = load_tasks(recipe, "train")
    seed, q = recipe.training.seed, recipe.data.queries_per_task
    sampler = RankInterleaved([TaskSampler(tasks, seed, q), TaskSampler(tasks, seed + 1, q)], per_rank=2)
    cfg = recipe.training.model_copy(update={"checkpoint_every": None})
    history = Trainer(assembled.method, sampler, assembled.collator, cfg, tmp_path / "reference",
                      torch.device("cpu"), progress=False).fit()
    single = [h["loss"] for h in history]
    assert losses(run) == pytest.approx(single, rel=1e-5)
    final = load_file(str(run / "hypernetwork.safetensors"))
    for name, value in assembled.method.module.state_dict().items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-4, msg=name)
    # the run trained in two processes evaluates in one
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--max-instances", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (run / "eval" / "scores.json").is_file()


@pytest.mark.distributed
def test_two_process_run_resumes_from_its_checkpoint(two_process_run):
    tmp_path, _, path, run = two_process_run
    cut = tmp_path / "cut"
    shutil.copytree(run, cut, ignore=shutil.ignore_patterns("eval"))
    (cut / "hypernetwork.safetensors").unlink()
    for folder in list_checkpoints(cut):
        if not folder.name.endswith("0002"):
            shutil.rmtree(folder)
    torchrun_train(path, cut, "--resume")
    assert losses(cut) == losses(run)  # every process resumed its own sampler and RNG states: exactly the same
    a, b = load_file(str(run / "hypernetwork.safetensors")), load_file(str(cut / "hypernetwork.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
