"""`hypergen bench` runs on the tiny size and writes a well-formed result (timings are not asserted); it builds its
hypernetworks from recipes and labels them by their registered names (a plugin generator by its own)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import catalogue
import pytest
import torch
from click.testing import CliRunner

from hypergen.bench import SIZES, BenchConfig
from hypergen.bench.setup import recipe_label, reference_recipes, size_recipe
from hypergen.cli import main
from hypergen.models.main import tiny_t5
from hypergen.recipe import parse_recipe
from hypergen.registry import KINDS, registry
from hypergen.runs.assembly import assemble
from hypergen.runs.folder import prepare_run_dir, save_final


def test_bench_tiny_writes_result(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--size", "tiny", "--tasks", "2", "--steps", "2", "--depths", "6,12",
                                       "--threads", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "headline" in result.output
    data = json.loads((out / "bench.json").read_text())
    for key in ("machine", "main_model", "lengths", "hypernetworks", "finetuning", "ratios", "headline",
                "memory_method", "wall_s"):
        assert key in data, key
    assert set(data["hypernetworks"]) == {"HART", "HyperTuning"}
    assert set(data["finetuning"]) == {"lora", "prefix"}
    for entry in data["hypernetworks"].values():
        assert entry["latency"]["median_s"] > 0 and entry["latency"]["n"] == 2
        assert entry["throughput"]["examples_per_s"] > 0
        assert entry["peak_memory_mib"] is not None and entry["peak_memory_mib"] >= 0
    for entry in data["finetuning"].values():
        assert entry["step"]["median_s"] > 0 and entry["s_steps"]["median_s"] > 0
        assert entry["trainable_parameters"] > 0
    assert all(v > 0 for v in data["ratios"].values()) and data["headline"]["ratio"] > 0
    scaling = data["hypernetworks"]["HART"]["depth_scaling"]
    assert scaling["cached"]["depths"] == [6, 12] and all(t > 0 for t in scaling["cached"]["seconds"])
    assert isinstance(scaling["cached"]["fit"]["exponent"], float)
    assert (out / "bench.png").stat().st_size > 1000
    # every query after adaptation: both paths timed at batch 1 and 16, the in-context prompt the longer one
    queries = data["queries"]
    assert queries["batch_sizes"] == [1, 16] and queries["in_context"]["per_query_s"] > 0
    for size in (1, 16):
        ctx, own = queries["in_context"][f"batch_{size}"], queries["adapter"][f"batch_{size}"]
        assert ctx["prompt_tokens"] > own["prompt_tokens"] > 0 and own["per_query_s"] > 0
        assert data["cost_ratios"][f"query_in_context/adapter_batch_{size}"] == pytest.approx(
            ctx["per_query_s"] / own["per_query_s"])
    lora_step = data["finetuning"]["lora"]["step"]["median_s"]
    assert data["cost_ratios"]["adaptation_HART/lora_step"] == pytest.approx(
        data["hypernetworks"]["HART"]["latency"]["median_s"] / lora_step)
    step = data["hypernetworks"]["HART"]["throughput"]
    assert step["flops_per_step"] > 0 and step["utilisation"] == pytest.approx(
        step["flops_per_step"] / step["step"]["median_s"] / step["peak_flops"])
    assert "every query after adaptation" in result.output and "cost ratios:" in result.output


def test_exact_length_decodes_every_token_asked_for_then_restores_the_config():
    from hypergen.bench.queries import exact_length
    from hypergen.models.main import tiny_causal
    from hypergen.recipe import TinyT5

    model = tiny_causal(TinyT5(architecture="llama", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4), 384)
    with torch.no_grad():  # an LM head that always predicts token 1, the end of sequence
        model.lm_head.weight.zero_()
        model.lm_head.weight[1] = 1.0
        model.model.norm.weight.fill_(1.0)
    ids = torch.tensor([[5, 6, 7]])
    assert model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=1).shape[1] < 3 + 6
    with exact_length(model, 6):
        assert model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=1).shape[1] == 3 + 6
    assert model.generation_config.min_new_tokens is None


def test_bench_refuses_run_and_size(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--run", str(tmp_path), "--size", "tiny"])
    assert result.exit_code == 2
    assert "not both" in result.output


# ------------------------------------------------------------------ hypernetworks come from recipes, by their names

BENCH_SOURCES = sorted((Path(__file__).resolve().parents[2] / "hypergen" / "bench").glob("*.py"))
PLUGIN_GENERATOR = "bench_plugin_generator"


@pytest.fixture
def plugin_generator():
    """A generator registered as a plugin registers one: a subclass of a built-in under its own versioned name.
    It records each forward pass, so that a test can see it was the one run; unregistered afterwards."""
    from hypergen.components.generators import NonAutoregressiveGenerator

    calls = []

    @registry.generators.register(f"{PLUGIN_GENERATOR}.v1")
    class PluginGenerator(NonAutoregressiveGenerator):
        def forward(self, *args, **kwargs):
            calls.append(1)
            return super().forward(*args, **kwargs)

    yield calls
    catalogue.REGISTRY.pop((*registry.generators.namespace, f"{PLUGIN_GENERATOR}.v1"))


def _write_run(run: Path, generator: str) -> None:
    """A finished tiny run folder (recipe.json + hypernetwork.safetensors, untrained weights) of ``generator``."""
    recipe = {"main_model": {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
                                      "num_decoder_layers": 2, "num_heads": 4}},
              "hypernetwork": {"decoder_layers": 1, "generator": {"name": generator}, "regularizers": []},
              "peft": {"name": "prefix", "length": 2},
              "data": {"source": "embedded", "num_positive": 2, "demo_style": "compact", "include_definition": False,
                       "max_demo_length": 32, "max_input_length": 16, "max_target_length": 8},
              "training": {"device": "cpu", "seed": 0}, "evaluation": {"max_new_tokens": 4}}
    prepare_run_dir(run, recipe, resume=False, overwrite=False)
    save_final(run, assemble(parse_recipe(recipe), torch.device("cpu")))


def test_bench_run_labels_a_plugin_generator_by_its_registered_name(tmp_path, plugin_generator):
    run, out = tmp_path / "run", tmp_path / "bench"
    _write_run(run, PLUGIN_GENERATOR)
    result = CliRunner().invoke(main, ["bench", "--run", str(run), "--tasks", "2", "--steps", "2", "--depths", "2,4",
                                       "--eval-every", "1", "--threads", "1", "--device", "cpu", "--output", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "bench.json").read_text())
    # the run's own hypernetwork first, under its generator's registered name; the references under theirs
    assert list(data["hypernetworks"]) == [PLUGIN_GENERATOR, "HART", "HyperTuning"]
    entry = data["hypernetworks"][PLUGIN_GENERATOR]
    assert entry["generator"] == PLUGIN_GENERATOR and entry["regularizers"] == [] and entry["trained"] is True
    assert not data["hypernetworks"]["HART"]["trained"] and not data["hypernetworks"]["HyperTuning"]["trained"]
    assert data["hypernetworks"]["HART"]["regularizers"] == ["local_consistency"]
    # the same architecture as the built-in it subclasses, built on the run's main model
    assert entry["parameters"] == data["hypernetworks"]["HyperTuning"]["parameters"]
    assert plugin_generator, "the plugin generator's forward never ran"
    assert data["headline"]["hypernetwork"] == PLUGIN_GENERATOR
    assert data["headline"]["ratio"] == data["ratios"][f"lora/{PLUGIN_GENERATOR}"]
    assert set(data["hypernet_rougeL_per_task"]) <= set(data["task_names"])
    assert f"{PLUGIN_GENERATOR} (tokenize + 1 pass)" in result.output
    assert "HyperTuning (tokenize + 1 pass)" in result.output


def test_reference_recipes_swap_only_the_generator_and_regularizers():
    base = size_recipe(SIZES["tiny"], BenchConfig(seed=3))
    references = reference_recipes(base)
    assert list(references) == ["HART", "HyperTuning"]
    assert recipe_label(references["HART"]) == "autoregressive+local_consistency"
    assert recipe_label(references["HyperTuning"]) == "non_autoregressive"
    for recipe in references.values():
        assert recipe.main_model == base.main_model and recipe.peft == base.peft and recipe.data == base.data
        assert recipe.training.seed == 3 and recipe.main_model.tiny.seed == 3
        assert recipe.hypernetwork.decoder_layers == base.hypernetwork.decoder_layers


def test_t5_large_size_has_t5_large_parameters():
    """Built by models.main.tiny_t5 from the size's TinyT5, on the meta device (no memory): T5-Large's count with a
    tied 32128-row head, summed layer by layer here."""
    spec = size_recipe(SIZES["t5-large"], BenchConfig(size="t5-large")).main_model.tiny
    with torch.device("meta"):
        model = tiny_t5(spec, vocab_size=384)
    d, ff, heads, layers, vocab = 1024, 2816, 16, 24, 32128
    attention, gated_ff = 4 * d * d, 3 * d * ff
    encoder = layers * (attention + gated_ff + 2 * d) + 32 * heads + d
    decoder = layers * (2 * attention + gated_ff + 3 * d) + 32 * heads + d
    assert sum(p.numel() for p in model.parameters()) == vocab * d + encoder + decoder == 750_251_008


def test_bench_names_no_component_class_and_reads_no_autoregressive_flag():
    """Every hypernetwork comes from a recipe through the registry: bench names no registered component class and
    never labels a method by the generator's ``autoregressive`` flag."""
    classes = {factory.__name__ for kind in KINDS for factory in registry.entries(kind).values()}
    assert "AutoregressiveGenerator" in classes and "PrefixTarget" in classes
    for source in BENCH_SOURCES:
        text = source.read_text()
        named = sorted(name for name in classes if re.search(rf"\b{name}\b", text))
        assert not named, f"{source.name} names {named}"
        assert ".autoregressive" not in text, source.name
