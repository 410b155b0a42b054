"""Gradient checkpointing (same losses and gradients) and multi-process training (2 CPU processes, gloo), with
the ``ddp`` backend and the DeepSpeed engine (``backend: "deepspeed"``, ZeRO-1/2/3).

The two-process tests launch ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m hypergen.cli
train ...``; they take some tens of seconds and are marked ``distributed`` (deselect with ``-m "not
distributed"``). The DeepSpeed tests need the ``scale`` extra (deepspeed) and are skipped without it; the first
DeepSpeed engine on a machine compiles a small op (about 90 s on 2 CPU cores) into the repository's
``.cache/torch_extensions``, reused afterwards.
"""

from __future__ import annotations

import copy
import importlib.util
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
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import load_tasks
from hypergen.training.checkpoint import list_checkpoints
from hypergen.training.activation_recompute import enable_gradient_checkpointing
from hypergen.training.distributed import accumulation_steps, setup
from hypergen.training.methods import HypernetMethod
from hypergen.training.trainer import Trainer

from tests.training.test_training import embedded_recipe, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install 'hypergen[scale]')")


@pytest.fixture(scope="module", autouse=True)
def _torch_extensions_once():
    """DeepSpeed's compiled ops go to the repository's .cache/torch_extensions, for every test and process of the
    session: built once (about 90 s), then loaded."""
    previous = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(REPO, ".cache", "torch_extensions")
    yield
    if previous is None:
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
    else:
        os.environ["TORCH_EXTENSIONS_DIR"] = previous


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
    data["distributed"] = {"backend": "deepspeed"}  # ZeRO stage 0 is plain data parallelism: backend ddp
    with pytest.raises(RecipeError, match="zero_stage"):
        parse_recipe(data)
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


@needs_deepspeed
def test_deepspeed_config_from_the_recipe(tmp_path):
    from hypergen.training.backends.deepspeed import engine_config

    data = plain_recipe(tmp_path)
    data["training"]["optimizer"] = "adam8bit"
    data["distributed"] = {"backend": "deepspeed", "zero_stage": 2, "precision": "bf16", "offload_optimizer": True}
    with pytest.raises(RecipeError, match="distributed.offload_optimizer"):  # before anything is loaded
        parse_recipe(data, "r.json")
    data["training"]["optimizer"] = "adamw"
    recipe = parse_recipe(data)
    config = engine_config(recipe.distributed, recipe.training, world_size=2, accumulation=2)
    assert config["train_batch_size"] == 8 and config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 2 and config["gradient_clipping"] == 1.0
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert config["bf16"]["enabled"] and config["bf16"]["check_grad_overflow"]


@needs_deepspeed
def test_deepspeed_in_one_process_skips_nonfinite_like_plain_training(tmp_path, monkeypatch):
    """``hypergen train`` without a launcher runs the engine in a process group of one (ZeRO-2 here). A NaN loss at
    step 2 and a NaN gradient at step 3 are skipped exactly as without DeepSpeed (same losses before and after:
    the skipped steps left weights, optimizer state and schedule alone); on_nonfinite 'stop' stops."""
    original = HypernetMethod.loss

    def poisoned(self, batch, step):
        loss, parts = original(self, batch, step)
        if step == 1:
            return loss * float("nan"), parts
        if step == 2:  # finite loss (0 added) whose gradient is NaN
            return loss + torch.sqrt((next(self.module.parameters()) * 0).sum()), parts
        return loss, parts

    monkeypatch.setattr(HypernetMethod, "loss", poisoned)
    data = plain_recipe(tmp_path)
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    environment = {name: os.environ.get(name) for name in names}
    runs = {}
    for name, section in (("plain", None), ("deepspeed", {"backend": "deepspeed", "zero_stage": 2})):
        if section:
            data["distributed"] = section
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        runs[name] = tmp_path / name
        result = CliRunner().invoke(main, ["train", str(path), "-o", str(runs[name]), "--quiet", "--no-eval"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
    # the process group of one is gone, and the environment is as it was
    assert not torch.distributed.is_initialized()
    assert {name: os.environ.get(name) for name in names} == environment
    records = {k: [json.loads(x) for x in (v / "metrics.jsonl").read_text().splitlines()] for k, v in runs.items()}
    losses_ds, losses_plain = ([r["loss"] for r in records[k]] for k in ("deepspeed", "plain"))
    assert losses_ds[1] is None and losses_ds[2] is None and losses_plain[1] is None and losses_plain[2] is None
    assert [losses_ds[0], losses_ds[3]] == pytest.approx([losses_plain[0], losses_plain[3]], rel=1e-6)
    assert "non-finite loss" in records["deepspeed"][1]["skipped"]
    assert "non-finite gradient" in records["deepspeed"][2]["skipped"]
    assert [r["lr"] for r in records["deepspeed"]] == [r["lr"] for r in records["plain"]]  # skipped steps count
    weights = load_file(str(runs["deepspeed"] / "hypernetwork.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    data["training"]["on_nonfinite"] = "stop"
    path = tmp_path / "stop.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "stop"), "--quiet", "--no-eval"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: step 2: non-finite loss (nan); stopped (training.on_nonfinite is 'stop')")
    assert not list_checkpoints(tmp_path / "stop")


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


@pytest.fixture(scope="module")
def one_process_reference(two_process_run):
    """One process that runs, per step, the 4 micro-batches the two processes run together (rank 0's then rank
    1's, from samplers seeded seed+0 and seed+1): its losses and final weights."""
    tmp_path, data, _, _ = two_process_run
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
    return [h["loss"] for h in history], assembled.method.module.state_dict()


@pytest.mark.distributed
def test_two_processes_match_one_process_on_the_same_examples(two_process_run, one_process_reference):
    """Two gloo processes (2 micro-batches of 2 examples each per step) against one process that runs the same 4
    micro-batches per step.

    Tolerance 1e-5 relative on the losses and 1e-4 absolute on the weights: the gradients are the same sums in a
    different order (per-process means, then the all-reduce), so they differ in the last float32 bits, and four
    Adam steps carry that along; anything else (wrong scaling, wrong examples, missing all-reduce) moves the
    losses by far more than that."""
    _, _, _, run = two_process_run
    single, reference = one_process_reference
    assert losses(run) == pytest.approx(single, rel=1e-5)
    final = load_file(str(run / "hypernetwork.safetensors"))
    for name, value in reference.items():
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


class Concatenated:
    """One micro-batch holding what ``chunks`` successive micro-batches of ``sampler`` hold, in the same order."""

    def __init__(self, sampler, chunks: int):
        self.sampler, self.chunks = sampler, chunks
        self.queries_per_task = sampler.queries_per_task

    def next_batch(self, num_tasks):
        return [group for _ in range(self.chunks) for group in self.sampler.next_batch(num_tasks // self.chunks)]


def consistency_recipe(tmp_path) -> dict:
    """``plain_recipe`` with local consistency, and one target token per example, so that the cross-entropy of a
    micro-batch (a mean over its target tokens) does not depend on how the batch is split either."""
    data = plain_recipe(tmp_path, steps=3)
    data["hypernetwork"]["regularizers"] = [{"name": "local_consistency", "alpha": 10.0}]
    data["data"]["max_target_length"] = 1
    return data


def one_process_history(data, tmp_path, micro_batch_size: int):
    """One process on the examples the two processes of ``data`` see together, in micro-batches of the given size."""
    recipe = parse_recipe({k: v for k, v in data.items() if k != "distributed"})
    random.seed(recipe.training.seed)
    torch.manual_seed(recipe.training.seed)
    assembled = assemble(recipe, torch.device("cpu"))
    tasks = load_tasks(recipe, "train")
    seed, q = recipe.training.seed, recipe.data.queries_per_task
    sampler = RankInterleaved([TaskSampler(tasks, seed, q), TaskSampler(tasks, seed + 1, q)], per_rank=2)
    micro_batches = recipe.training.batch_size // micro_batch_size
    if micro_batches == 1:
        sampler = Concatenated(sampler, chunks=4)
    cfg = recipe.training.model_copy(update={"checkpoint_every": None, "micro_batch_size": micro_batch_size})
    return Trainer(assembled.method, sampler, assembled.collator, cfg, tmp_path / f"micro-{micro_batch_size}",
                   torch.device("cpu"), progress=False).fit()


@pytest.mark.distributed
def test_consistency_term_is_the_same_for_any_batch_layout(tmp_path):
    """Local consistency compares micro-batch m of step t with micro-batch m of step t-1, so the weighted term is
    the MSE over the whole batch's rows however the batch is laid out: 2 gloo processes x 2 micro-batches of 2
    examples, one process x 4 micro-batches of 2, and one micro-batch of 8, all on the same examples, log the same
    consistency term and prediction loss (to float32 tolerance), 0 for the whole first step."""
    data = consistency_recipe(tmp_path)
    data["distributed"] = {"backend": "ddp"}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    torchrun_train(path, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accumulated, whole = (one_process_history(data, tmp_path, size) for size in (2, 8))
    key = "local_consistency"
    assert records[0][key] == accumulated[0][key] == whole[0][key] == 0.0
    assert all(r["local_consistency"] > 1e-6 for r in records[1:])
    for key in ("local_consistency", "loss"):
        two = [r[key] for r in records]
        assert two == pytest.approx([h[key] for h in accumulated], rel=1e-5), key
        assert two == pytest.approx([h[key] for h in whole], rel=1e-5), key


# -- two processes, DeepSpeed ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deepspeed_run(two_process_run):
    """The two-process run of ``two_process_run``'s recipe through the DeepSpeed engine, ZeRO-2 (fp32, AdamW)."""
    tmp_path, data, _, _ = two_process_run
    data = {**data, "distributed": {"backend": "deepspeed", "zero_stage": 2}}
    path = tmp_path / "deepspeed.json"
    path.write_text(json.dumps(data))
    torchrun_train(path, tmp_path / "deepspeed")
    return tmp_path, data, path, tmp_path / "deepspeed"


@needs_deepspeed
@pytest.mark.distributed
def test_deepspeed_zero2_matches_one_process_on_the_same_examples(deepspeed_run, one_process_reference):
    """ZeRO-2 in two processes against the same one-process reference as ddp, with ddp's tolerance: 1e-5 relative
    on the losses, 1e-4 absolute on the weights. The engine sums the same gradients in yet another order (each
    process's micro-batches accumulated, then a reduce-scatter of flat buckets, the norm over partitions), which
    moves the last float32 bits only (observed: losses equal to 1e-7, weights to 1e-6); a wrong scaling by the
    accumulation steps or the processes, a missing reduction or other examples move them by 1e-2 and more."""
    _, _, _, run = deepspeed_run
    single, reference = one_process_reference
    assert losses(run) == pytest.approx(single, rel=1e-5)
    final = load_file(str(run / "hypernetwork.safetensors"))
    assert final.keys() == reference.keys()
    for name, value in reference.items():
        assert final[name].dtype == torch.float32
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-4, msg=name)
    checkpoint = list_checkpoints(run)[-1]  # hypergen's files (full weights) plus the engine's, in one manifest
    manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "optimizer.json", "state.json"} <= manifest.keys()
    assert any(name.startswith("deepspeed/engine/zero_pp_rank_1") for name in manifest)
    assert load_file(str(checkpoint / "model.safetensors")).keys() == reference.keys()


@needs_deepspeed
@pytest.mark.distributed
def test_deepspeed_run_resumes_from_its_checkpoint(deepspeed_run):
    """Cut after the step-2 checkpoint, resumed with --resume: the engine's optimizer partitions and schedule come
    back with engine.load_checkpoint, hypergen's sampler and RNG states as always: exactly the same run."""
    tmp_path, _, path, run = deepspeed_run
    cut = tmp_path / "deepspeed-cut"
    shutil.copytree(run, cut, ignore=shutil.ignore_patterns("eval"))
    (cut / "hypernetwork.safetensors").unlink()
    assert [folder.name for folder in list_checkpoints(cut)] == ["step-00000002"]
    torchrun_train(path, cut, "--resume")
    assert losses(cut) == losses(run)
    a, b = load_file(str(run / "hypernetwork.safetensors")), load_file(str(cut / "hypernetwork.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@needs_deepspeed
@pytest.mark.distributed
def test_deepspeed_zero3_bf16_adam8bit_weights_load_in_one_process(deepspeed_run, one_process_reference):
    """ZeRO-3 (weights partitioned over the two processes), bf16 and 8-bit Adam as the engine's client optimizer:
    hypernetwork.safetensors and the checkpoint hold the full fp32 weights (gathered), which `hypergen eval`
    loads in one process. Losses within 1e-2 relative of the fp32 AdamW reference: bf16 rounding and 8-bit
    optimizer state (observed: 1e-3); an untrained or diverging run would be off by more."""
    tmp_path, data, _, _ = deepspeed_run
    data = copy.deepcopy(data)
    data["distributed"] = {"backend": "deepspeed", "zero_stage": 3, "precision": "bf16"}
    data["training"]["optimizer"] = "adam8bit"
    path = tmp_path / "zero3.json"
    path.write_text(json.dumps(data))
    run = tmp_path / "zero3"
    torchrun_train(path, run)
    single, reference = one_process_reference
    assert losses(run) == pytest.approx(single, rel=1e-2)
    for weights in (run / "hypernetwork.safetensors", list_checkpoints(run)[-1] / "model.safetensors"):
        loaded = load_file(str(weights))
        assert loaded.keys() == reference.keys()
        for name, value in reference.items():
            assert loaded[name].shape == value.shape and loaded[name].dtype == torch.float32, name
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--max-instances", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval" / "scores.json").read_text())["overall"]["instances"] > 0


@pytest.mark.parametrize("section", [
    {"backend": "ddp"},
    pytest.param({"backend": "deepspeed", "zero_stage": 2}, marks=needs_deepspeed),
], ids=["ddp", "deepspeed-zero2"])
def test_deferred_weight_gradients_reach_distributed_backends_as_plain_ones(tmp_path, monkeypatch, section):
    """HART's decoder weights take the few-rows path (threshold lowered for the tiny model), so their gradients are
    deferred (one product over all steps); in a process group of one, DDP's reducer and DeepSpeed's ZeRO-2 hooks
    receive them and the run's losses and weights are those of the same run without deferral and without a
    backend."""
    from hypergen.models import few_rows
    from tests.models.test_deferred_weight_gradients import record_deferred_products, without_deferral

    monkeypatch.setattr(few_rows, "MIN_WEIGHT_ELEMENTS", 0)
    products = record_deferred_products(monkeypatch)
    data = plain_recipe(tmp_path, steps=3)
    data["training"]["checkpoint_every"] = None
    runs = {"distributed": train(tmp_path, {**data, "distributed": section}, tmp_path / "distributed")}
    assert products and max(count for count, _ in products) > 1  # several decoding steps in one product
    without_deferral(monkeypatch)  # the reference: no deferral, no backend
    runs["plain"] = train(tmp_path, data, tmp_path / "plain")
    assert losses(runs["distributed"]) == pytest.approx(losses(runs["plain"]), rel=1e-5)
    trained, reference = (load_file(str(runs[k] / "hypernetwork.safetensors")) for k in ("distributed", "plain"))
    assert trained.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(trained[key], reference[key], rtol=0, atol=1e-4, msg=key)
