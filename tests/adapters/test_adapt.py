"""Adapters: the peft round trip of a LoRA parameter set, `hypergen adapt` / `hypergen predict` end to end, and
PEFT targets (built-in or a plugin's) owning their adapter formats, dispatched by their registered name."""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import shutil
import warnings

import catalogue
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5ForConditionalGeneration

import hypergen.adapters.folder
from hypergen.adapters.folder import generate_task_parameters, load_adapter, write_adapter
from hypergen.cli import main
from hypergen.components.base import PEFTTarget
from hypergen.components.targets.lora import LoraTarget
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.data.tasks import load_task
from hypergen.errors import HypergenError
from hypergen.models.main import load_main_model, save_main_model
from hypergen.recipe import MainModel, TinyT5
from hypergen.registry import registry
from hypergen.runs.folder import load_final
from tests.training.test_training import embedded_recipe, train

peft = pytest.importorskip("peft")


def make_model() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=32, d_kv=6, d_ff=64, num_layers=3, num_decoder_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("kwargs", [{}, {"targets": ["q", "k", "v", "o"], "attention": ["self", "cross"]}],
                         ids=["default", "all"])
def test_peft_round_trip(tmp_path, kwargs):
    model = make_model()
    stock = copy.deepcopy(model)
    target = LoraTarget(rank=2, alpha=4.0, **kwargs)
    target.prepare(model)
    gen = torch.Generator().manual_seed(1)
    params = {g.name: 0.3 * torch.randn(1, g.num_layers, g.rows, g.width, generator=gen)
              for g in target.slot_groups(model)}
    write_adapter(tmp_path / "a", target, {k: v[0] for k, v in params.items()}, model, "tiny-t5")

    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["task_type"]) == ("LORA", 2, 4.0,
                                                                                             "SEQ_2_SEQ_LM")
    state = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q"
    assert state[f"{key}.lora_A.weight"].shape == (2, 32) and state[f"{key}.lora_B.weight"].shape == (24, 2)
    sites = list(target.sites(model))
    assert len(state) == 2 * len(sites)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(stock), str(tmp_path / "a"))
    assert not [w for w in caught if "adapter keys" in str(w.message) or "unexpected" in str(w.message).lower()]
    result = peft_model.load_adapter(str(tmp_path / "a"), adapter_name="check")
    assert result.missing_keys == [] and result.unexpected_keys == []
    peft_model.set_adapter("default")
    lora_layers = [n for n, m in peft_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(lora_layers) == len(sites)  # the regex names exactly the adapted projections

    x = torch.randint(2, 384, (2, 7), generator=gen)
    y = torch.randint(2, 384, (2, 5), generator=gen)
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    with torch.no_grad():
        with target.applied(model, {k: v.expand(2, -1, -1, -1) for k, v in params.items()}):
            ours = model(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
        theirs = peft_model(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
        plain = stock(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
    assert (ours - plain).abs().max() > 1e-2
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # hypergen's own loader reads the same folder back
    fresh = copy.deepcopy(stock)
    adapter = load_adapter(tmp_path / "a", fresh)
    assert adapter.kind == "lora" and adapter.target.describe() == target.describe()
    with torch.no_grad(), adapter.target.applied(fresh, {k: v.expand(2, -1, -1, -1) for k, v in adapter.params.items()}):
        again = fresh(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
    torch.testing.assert_close(again, ours, atol=1e-6, rtol=0)

    other = T5ForConditionalGeneration(T5Config(vocab_size=384, d_model=32, d_kv=6, d_ff=64, num_layers=2,
                                                num_decoder_layers=2, num_heads=4))
    with pytest.raises(HypergenError, match="adapter_model.safetensors: .*encoder layers"):
        load_adapter(tmp_path / "a", other)


# ------------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs trained for 2 steps on the embedded tasks: prefix and LoRA (both with fusion-in-decoder)."""
    root = tmp_path_factory.mktemp("adapt")
    out = {}
    for name, peft_spec in (("prefix", {"name": "prefix", "length": 2}), ("lora", {"name": "lora", "rank": 2})):
        recipe = embedded_recipe(root, steps=2)
        recipe["peft"] = peft_spec
        recipe["evaluation"] = {"max_new_tokens": 6}
        recipe["training"]["checkpoint_every"] = None
        out[name] = train(root, recipe, root / name)
    out["data"] = root / "embedded"
    return out


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("kind", ["prefix", "lora"])
def test_adapt_then_predict_equals_eval(runs, kind, tmp_path):
    run, data = runs[kind], runs["data"]
    name = (data / "splits" / "default" / "test_tasks.txt").read_text().split()[0]
    (tmp_path / "split.txt").write_text(name + "\n")
    result = invoke("eval", "--run", run, "--split", tmp_path / "split.txt", "--quiet")
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(expected) == 2

    out = tmp_path / "adapter"
    result = invoke("adapt", "--run", run, "--task", data / "tasks" / f"{name}.json", "--out", out)
    assert result.exit_code == 0, result.output
    files = {p.name for p in out.iterdir()}
    weights = "adapter_model.safetensors" if kind == "lora" else "prefix.safetensors"
    assert {"adapter_config.json", weights, "fusion.safetensors", "hypergen_adapter.json", "base_model"} <= files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base_model").resolve())
    if kind == "prefix":
        assert config["hypergen_adapter"] == "prefix" and config["length"] == 2 and config["fusion_in_decoder"]
        assert (config["num_layers"], config["num_decoder_layers"], config["d_model"]) == (2, 2, 32)
    else:
        assert config["peft_type"] == "LORA" and config["r"] == 2
    fusion = load_file(str(out / "fusion.safetensors"))
    assert fusion["states"].shape[1] == 32 and fusion["mask"].shape == fusion["states"].shape[:1]

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in expected))
    result = invoke("predict", "--adapter", out, "--input", queries, "--output", tmp_path / "pred.jsonl", "--quiet")
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [g["input"] for g in got] == [r["input"] for r in expected]
    assert [g["prediction"] for g in got] == [r["prediction"] for r in expected]
    result = CliRunner().invoke(main, ["predict", "--adapter", str(out), "--input", str(queries), "--quiet"])
    assert result.exit_code == 0 and [json.loads(x) for x in result.stdout.splitlines()] == got  # stdout

    if kind == "lora":  # the exported LoRA part loads into peft with the saved main model
        base, _ = load_main_model(MainModel(name_or_path=config["base_model_name_or_path"]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            peft.PeftModel.from_pretrained(base, str(out))
        assert not [w for w in caught if "adapter keys" in str(w.message)]


def test_adapt_from_demos_file(runs, tmp_path):
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"definition": "Append x."}\n\n{"input": "ab", "output": "abx"}\n'
                     '{"input": "7", "output": ["7x"]}\n')
    out = tmp_path / "from-demos"
    result = invoke("adapt", "--run", runs["lora"], "--demos", demos, "--out", out)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "hypergen_adapter.json").read_text())
    assert settings["task"] == "demos" and settings["fusion_in_decoder"] is True
    (tmp_path / "q.jsonl").write_text('{"input": "cd"}\n{"input": "9"}\n{"input": "e"}\n')
    result = invoke("predict", "--adapter", out, "--input", tmp_path / "q.jsonl", "--batch-size", 2,
                    "--max-new-tokens", 3, "--quiet")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["input"] for x in lines] == ["cd", "9", "e"] and all(isinstance(x["prediction"], str) for x in lines)
    # --out exists: refused without --overwrite, replaced with it
    result = invoke("adapt", "--run", runs["lora"], "--demos", demos, "--out", out)
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke("adapt", "--run", runs["lora"], "--demos", demos, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_inputs_fail_in_one_line(runs, tmp_path):
    # a demos file with no pairs
    demos = tmp_path / "empty.jsonl"
    demos.write_text('{"definition": "Append x."}\n')
    out = tmp_path / "out"
    result = invoke("adapt", "--run", runs["prefix"], "--demos", demos, "--out", out)
    assert result.exit_code == 2 and str(demos) in result.output and "no demonstration pairs" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()

    # a run folder with no hypernetwork
    bare = tmp_path / "bare-run"
    bare.mkdir()
    shutil.copy(runs["prefix"] / "recipe.json", bare / "recipe.json")
    demos.write_text('{"input": "ab", "output": "abx"}\n')
    result = invoke("adapt", "--run", bare, "--demos", demos, "--out", out)
    assert result.exit_code == 2 and str(bare / "hypernetwork.safetensors") in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()

    # an adapter folder from another main model
    result = invoke("adapt", "--run", runs["prefix"], "--demos", demos, "--out", out)
    assert result.exit_code == 0, result.output
    other, tokenizer = load_main_model(MainModel(tiny=TinyT5(d_model=32, d_kv=8, d_ff=64, num_layers=3,
                                                             num_decoder_layers=2, num_heads=4)))
    save_main_model(other, tokenizer, tmp_path / "other-model")
    moved = tmp_path / "foreign"
    shutil.copytree(out, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "other-model")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "q.jsonl").write_text('{"input": "cd"}\n')
    pred = tmp_path / "pred.jsonl"
    result = invoke("predict", "--adapter", moved, "--input", tmp_path / "q.jsonl", "--output", pred, "--quiet")
    assert result.exit_code == 2, result.output
    assert str(moved / "adapter_config.json") in result.output and "num_layers" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ") and result.output.count("error:") == 1
    assert not pred.exists()


# ------------------------------------------------------------------------ targets own their adapter formats

@pytest.fixture
def register_target():
    """Register peft targets as a plugin's entry point would (``registry.peft_targets``); removed afterwards."""
    added = []

    def register(name, cls):
        registry.peft_targets.register(name, func=cls)
        added.append(name)
        return cls

    yield register
    for name in added:
        catalogue._remove((*registry.peft_targets.namespace, name))


class PluginLora(LoraTarget):
    """A third-party subclass of a built-in target: it inherits peft's LoRA format."""


class StackedPrefix(PrefixTarget):
    """A third-party target with a format of its own: every slot group stacked into one tensor of one file."""

    adapter_format = "stacked_prefix"

    def export(self, folder, params, main_model, base_model_name_or_path, fusion_in_decoder):
        groups = [g.name for g in self.slot_groups(main_model)]
        save_file({"stacked": torch.stack([params[g].float() for g in groups])}, str(folder / "stacked.safetensors"))
        return {"groups": groups, "length": self.length, "base_model_name_or_path": base_model_name_or_path}

    @classmethod
    def load(cls, folder, config, main_model):
        stacked = load_file(str(folder / "stacked.safetensors"))["stacked"]
        sides = {name.split(".")[0] for name in config["groups"]}
        target = cls(length=config["length"], encoder="encoder" in sides, decoder="decoder" in sides)
        return target, {g: stacked[i][None] for i, g in enumerate(config["groups"])}


class NoFormat(PEFTTarget):
    """A target that declares no adapter format."""

    def slot_groups(self, main_model):
        return []

    def prepare(self, main_model):
        pass

    def applied(self, main_model, params):
        return contextlib.nullcontext()


def random_params(target, model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.randn(g.num_layers, g.rows, g.width, generator=gen) for g in target.slot_groups(model)}


def test_plugin_target_adapts_through_the_cli_and_loads_the_generated_parameters(runs, register_target, tmp_path):
    register_target("plugin_lora.v1", PluginLora)
    plugin_run = tmp_path / "plugin-run"
    shutil.copytree(runs["lora"], plugin_run)
    recipe = json.loads((plugin_run / "recipe.json").read_text())
    recipe["peft"]["name"] = "plugin_lora"  # the bare name resolves to the newest version, as for built-ins
    (plugin_run / "recipe.json").write_text(json.dumps(recipe))
    name = (runs["data"] / "splits" / "default" / "test_tasks.txt").read_text().split()[0]
    task_file = runs["data"] / "tasks" / f"{name}.json"

    out = tmp_path / "adapter"
    result = invoke("adapt", "--run", plugin_run, "--task", task_file, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "hypergen_adapter.json").read_text())
    assert (settings["peft_target"], settings["hypergen_adapter"]) == ("plugin_lora.v1", "lora")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"  # peft's format, inherited

    model, _ = load_main_model(MainModel(name_or_path=str(out / "base_model")))
    adapter = load_adapter(out, model)
    assert type(adapter.target) is PluginLora and adapter.kind == "lora"
    expected, _ = generate_task_parameters(load_final(plugin_run), load_task(task_file))
    assert set(adapter.params) == set(expected.params)
    for group, value in expected.params.items():
        assert torch.equal(adapter.params[group], value.cpu()), group
    assert torch.equal(adapter.fusion_states, expected.encoder_states.cpu())


def test_plugin_target_with_its_own_format_round_trips(register_target, tmp_path):
    register_target("stacked_prefix.v1", StackedPrefix)
    model = make_model()
    target = StackedPrefix(length=3, decoder=False)
    params = random_params(target, model)
    write_adapter(tmp_path / "a", target, params, model, "tiny-t5")
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"adapter_config.json", "stacked.safetensors",
                                                             "hypergen_adapter.json"}
    adapter = load_adapter(tmp_path / "a", model)
    assert type(adapter.target) is StackedPrefix and adapter.kind == "stacked_prefix"
    assert adapter.target.describe() == target.describe()
    assert set(adapter.params) == {"encoder.key", "encoder.value"}
    for group, value in params.items():
        assert torch.equal(adapter.params[group], value[None]), group


def test_targets_without_a_format_or_a_name_are_refused_in_one_line(register_target, tmp_path):
    model = make_model()
    register_target("no_format.v1", NoFormat)
    with pytest.raises(HypergenError, match=r"^peft target NoFormat has no adapter format \(.*\)[^\n]*$"):
        write_adapter(tmp_path / "a", NoFormat(), {}, model, "tiny-t5")
    with pytest.raises(HypergenError, match=r"^peft target PluginLora is not registered in hypergen's registry"):
        write_adapter(tmp_path / "b", PluginLora(rank=2), {}, model, "tiny-t5")
    assert not (tmp_path / "b").exists()


def test_unknown_target_name_in_a_folder_fails_in_one_line(runs, tmp_path):
    out = tmp_path / "adapter"
    (tmp_path / "demos.jsonl").write_text('{"input": "ab", "output": "abx"}\n')
    result = invoke("adapt", "--run", runs["prefix"], "--demos", tmp_path / "demos.jsonl", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    settings_file = out / "hypergen_adapter.json"
    settings = json.loads(settings_file.read_text())
    assert settings["peft_target"] == "prefix.v1"
    settings["peft_target"] = "vanished_plugin.v1"
    settings_file.write_text(json.dumps(settings))
    (tmp_path / "q.jsonl").write_text('{"input": "cd"}\n')
    result = invoke("predict", "--adapter", out, "--input", tmp_path / "q.jsonl", "--quiet")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert str(settings_file) in result.output and "'vanished_plugin.v1'" in result.output
    assert "known: lora.v1, prefix.v1" in result.output


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_folders_that_name_no_target_still_load(kind, tmp_path):
    """Folders from before targets were named: an old hypergen folder (no 'peft_target'), and for LoRA a peft
    folder from elsewhere (no hypergen_adapter.json at all)."""
    model = make_model()
    target = LoraTarget(rank=2, alpha=4.0) if kind == "lora" else PrefixTarget(length=2)
    params = random_params(target, model)
    write_adapter(tmp_path / "a", target, params, model, "tiny-t5")
    settings_file = tmp_path / "a" / "hypergen_adapter.json"
    settings = json.loads(settings_file.read_text())
    del settings["peft_target"]
    settings_file.write_text(json.dumps(settings))
    folders = [tmp_path / "a"]
    if kind == "lora":
        shutil.copytree(tmp_path / "a", tmp_path / "from-peft")
        (tmp_path / "from-peft" / "hypergen_adapter.json").unlink()
        folders.append(tmp_path / "from-peft")
    for folder in folders:
        adapter = load_adapter(folder, model)
        assert type(adapter.target) is type(target) and adapter.kind == kind
        for group, value in params.items():
            assert torch.equal(adapter.params[group], value[None]), (folder, group)


def test_adapters_module_names_no_builtin_target():
    source = inspect.getsource(hypergen.adapters.folder)
    assert "LoraTarget" not in source and "PrefixTarget" not in source and "isinstance(target" not in source
