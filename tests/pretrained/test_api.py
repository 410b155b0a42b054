"""The Python API (hypergen.HyperNetwork, TaskAdapter), the hub paths that work offline, metric loggers and the
recipes shipped in the package."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import hypergen
from hypergen.recipe.builtin import builtin_names, recipes_folder
from hypergen.cli import main
from hypergen.errors import HypergenError
from hypergen.recipe import ComponentSpec
from hypergen.registry import registry
from hypergen.training.loggers import Loggers
from tests.training.test_training import embedded_recipe, train

REPO = Path(__file__).resolve().parents[2]
DEMOS = [{"input": "bd", "output": "xbdy"}, {"input": "ac", "output": "xacy"}, {"input": "hg", "output": "xhgy"}]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny 2-step runs: prefix (as the tiny default) and LoRA with a tensorboard logger; fake eval scores."""
    root = tmp_path_factory.mktemp("api")
    out = {}
    for name, peft_spec in (("prefix", {"name": "prefix", "length": 2}), ("lora", {"name": "lora", "rank": 2})):
        recipe = embedded_recipe(root, steps=2)
        recipe["peft"] = peft_spec
        recipe["evaluation"] = {"max_new_tokens": 5}
        recipe["training"]["checkpoint_every"] = None
        if name == "lora" and importlib.util.find_spec("tensorboard") is not None:  # in the test extra
            recipe["training"]["loggers"] = [{"name": "tensorboard"}]
        out[name] = train(root, recipe, root / name)
    for run, rouge in ((out["prefix"], 40.0), (out["prefix"] / "eval-other-demos", 15.5)):
        folder = run if run.name.startswith("eval") else run / "eval"
        folder.mkdir(parents=True, exist_ok=True)  # what `hypergen eval` (--other-demos) writes, read by the card
        (folder / "scores.json").write_text(json.dumps({"overall": {"exact_match": 10.0, "rougeL": rouge,
                                                                    "instances": 8}, "per_task": {}}))
    out["data"] = root / "embedded"
    return out


def test_top_level_name_is_the_assembled_run():
    from hypergen.models.hypernet import HyperNetwork as Module
    from hypergen.pretrained.hypernetwork import PretrainedHyperNetwork

    assert hypergen.HyperNetwork is PretrainedHyperNetwork and hypergen.HyperNetwork is not Module


def test_adapt_generate_save_equal_the_cli(runs, tmp_path):
    hn = hypergen.HyperNetwork.from_pretrained(runs["lora"])
    adapter = hn.adapt(DEMOS, definition="Add the secret letters.")
    assert adapter.kind == "lora" and adapter.params["encoder.self.q.A"].shape == (2, 2, 32)
    adapter.save_pretrained(tmp_path / "py")
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"definition": "Add the secret letters."}) + "\n"
                     + "".join(json.dumps(d) + "\n" for d in DEMOS))
    assert invoke("adapt", "--run", runs["lora"], "--demos", demos, "--out", tmp_path / "cli").exit_code == 0
    for name in ("adapter_model.safetensors", "fusion.safetensors"):
        ours, theirs = load_file(str(tmp_path / "py" / name)), load_file(str(tmp_path / "cli" / name))
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
    py_settings = json.loads((tmp_path / "py" / "hypergen_adapter.json").read_text())
    cli_settings = json.loads((tmp_path / "cli" / "hypergen_adapter.json").read_text())
    assert py_settings == cli_settings  # same task name ("demos"), demos digest, run and settings
    queries = ["fa", "cab", "e"]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"input": q}) + "\n" for q in queries))
    result = invoke("predict", "--adapter", tmp_path / "cli", "--input", tmp_path / "q.jsonl", "--quiet")
    assert result.exit_code == 0, result.output
    expected = [json.loads(line)["prediction"] for line in result.stdout.splitlines()]
    assert adapter.generate(queries, batch_size=2) == expected
    with pytest.raises(HypergenError, match="already exists"):
        adapter.save_pretrained(tmp_path / "py")
    with pytest.raises(HypergenError, match="demos: item 1: expected"):
        hn.adapt([DEMOS[0], {"input": "x"}])


def test_many_demo_sets_in_one_pass_equal_one_at_a_time(runs):
    hn = hypergen.HyperNetwork.from_pretrained(runs["lora"])
    task_file = sorted((runs["data"] / "tasks").glob("*.json"))[0]
    sets = [DEMOS, DEMOS[:1], task_file]
    calls = []
    hook = hn.module.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    batched = hn.adapt(sets)
    hook.remove()
    assert calls == [3] and len(batched) == 3  # one pass over the three tasks
    for one, demos in zip(batched, sets):
        alone = hn.adapt(demos)
        for key, value in alone.params.items():
            torch.testing.assert_close(one.params[key], value, rtol=0, atol=1e-5)
        assert one.parameters.encoder_states.shape == alone.parameters.encoder_states.shape
        torch.testing.assert_close(one.parameters.encoder_states, alone.parameters.encoder_states, rtol=0, atol=1e-5)


def test_to_peft_is_the_generated_lora(runs):
    peft = pytest.importorskip("peft")
    hn = hypergen.HyperNetwork.from_pretrained(runs["lora"])
    adapter = hn.adapt(DEMOS)
    with pytest.warns(UserWarning, match="fusion-in-decoder"):
        model = adapter.to_peft()
    assert isinstance(model, peft.PeftModel)
    x = torch.randint(3, 200, (2, 6))
    y = torch.randint(3, 200, (2, 4))
    target, main_model = hn.assembled.method.target, hn.main_model
    with torch.no_grad():
        with target.applied(main_model, {k: v.expand(2, -1, -1, -1) for k, v in adapter.parameters.params.items()}):
            ours = main_model(input_ids=x, decoder_input_ids=y).logits
        theirs = model(input_ids=x, decoder_input_ids=y).logits
        plain = main_model(input_ids=x, decoder_input_ids=y).logits
    assert (ours - plain).abs().max() > 1e-4  # the LoRA changes the model, the stock model stays stock
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    with pytest.raises(HypergenError, match="'prefix' adapter has no peft equivalent"):
        hypergen.HyperNetwork.from_pretrained(runs["prefix"]).adapt(DEMOS).to_peft()


def test_save_pretrained_round_trip_card_and_checks(runs, tmp_path):
    hn = hypergen.HyperNetwork.from_pretrained(runs["prefix"])
    folder = hn.save_pretrained(tmp_path / "saved")
    assert {p.name for p in folder.iterdir()} == {"README.md", "hypergen_config.json", "hypernetwork.safetensors",
                                                  "main_model", "recipe.json", "tokenizer"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    config = json.loads((folder / "hypergen_config.json").read_text())
    assert (config["format"], config["format_version"], config["main_model"]["copied"]) == \
        ("hypergen.hypernetwork", 1, True)
    assert config["main_model"]["shape"]["num_layers"] == 2 and config["evaluation"]["control_gap"]["rougeL"] == 24.5
    card = (folder / "README.md").read_text()
    assert "| rougeL | 40.00 | 15.50 | +24.50 |" in card and '"decoder_layers": 1' in card and "HART + prefix" in card
    assert json.loads((folder / "recipe.json").read_text()) == json.loads((runs["prefix"] / "recipe.json").read_text())

    again = hypergen.HyperNetwork.from_pretrained(folder)
    a, b = hn.module.state_dict(), again.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.adapt(DEMOS).generate(["fa", "cab"]) == hn.adapt(DEMOS).generate(["fa", "cab"])
    assert again.evaluation == hn.evaluation

    config["format_version"] = 99
    (folder / "hypergen_config.json").write_text(json.dumps(config))
    with pytest.raises(HypergenError, match=r"hypergen_config.json: format_version 99") as info:
        hypergen.HyperNetwork.from_pretrained(folder)
    assert "\n" not in str(info.value)
    config["format_version"] = 1
    (folder / "hypergen_config.json").write_text(json.dumps(config))
    other = hypergen.HyperNetwork.from_pretrained(runs["lora"]).save_pretrained(tmp_path / "other")
    shape = json.loads((other / "hypergen_config.json").read_text())["main_model"]["shape"]
    assert shape == config["main_model"]["shape"]  # same tiny main model: accepted as main_model=
    hypergen.HyperNetwork.from_pretrained(folder, main_model=str(other / "main_model"))
    config["main_model"]["shape"]["num_layers"] = 3
    (folder / "hypergen_config.json").write_text(json.dumps(config))
    with pytest.raises(HypergenError, match=r"trained for a main model with num_layers=3, but .* has num_layers=2"):
        hypergen.HyperNetwork.from_pretrained(folder)
    with pytest.raises(HypergenError, match="neither hypergen_config.json"):
        hypergen.HyperNetwork.from_pretrained(tmp_path)


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """A Hugging Face cache holding ``folder`` as ``repo_id`` at main (the layout huggingface_hub writes)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_from_cache_and_offline_errors(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = hypergen.HyperNetwork.from_pretrained(runs["prefix"]).save_pretrained(tmp_path / "saved")
    _hub_cache(tmp_path / "cache", "someone/tiny-hart", saved)
    hn = hypergen.HyperNetwork.from_pretrained("someone/tiny-hart", cache_dir=tmp_path / "cache")
    assert hn.source == "someone/tiny-hart" and "snapshots" in str(hn.assembled.recipe.main_model.name_or_path)
    with pytest.raises(HypergenError, match=r"cannot reach the Hugging Face Hub \(HF_HUB_OFFLINE is set\) and "
                                            r"'someone/other' is not in the local cache") as info:
        hypergen.HyperNetwork.from_pretrained("someone/other", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    with pytest.raises(HypergenError, match="at revision 'v2'"):
        hypergen.HyperNetwork.from_pretrained("someone/tiny-hart", revision="v2", cache_dir=tmp_path / "cache")
    with pytest.raises(HypergenError, match="neither a folder nor a hub repo id"):
        hypergen.HyperNetwork.from_pretrained("./missing/folder")


def test_push_to_hub_offline_then_with_a_recorded_upload(runs, tmp_path, monkeypatch):
    import hypergen.pretrained.hub as hub

    hn = hypergen.HyperNetwork.from_pretrained(runs["prefix"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HypergenError, match="push_to_hub: cannot reach the Hugging Face Hub.*nothing was saved"):
        hn.push_to_hub("user/hart-tiny")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HypergenError, match="not a repo id"):
        hn.push_to_hub("no-owner")

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs))
            return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=RecordingApi))
    url = hn.push_to_hub("user/hart-tiny", private=True, token="t0k")
    assert url == "https://huggingface.co/user/hart-tiny/commit/abc"
    assert calls[0] == ("init", "t0k")
    assert calls[1] == ("create_repo", "user/hart-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][:3] == ("upload_folder", "user/hart-tiny", ["README.md", "hypergen_config.json",
                                                                "hypernetwork.safetensors", "main_model",
                                                                "recipe.json", "tokenizer"])
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone


# ------------------------------------------------------------------------------------------------- loggers

def test_tensorboard_events_hold_the_logged_metrics(runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["lora"] / "tensorboard"))
    events.Reload()
    lines = [json.loads(x) for x in (runs["lora"] / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "local_consistency", "lr"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [line["step"] for line in lines] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([line[key] for line in lines], rel=1e-6)


def test_wandb_logger_and_a_registered_logger(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    bad = embedded_recipe(tmp_path, steps=1)
    bad["training"]["loggers"] = [{"name": "wandb"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = invoke("recipes", "validate", tmp_path / "bad.json")
    assert result.exit_code == 2 and "training.loggers.0: wandb is not installed" in result.output
    assert len(result.output.strip().splitlines()) == 1
    bad["training"]["loggers"] = [{"name": "nowhere"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = invoke("recipes", "validate", tmp_path / "bad.json")
    assert result.exit_code == 2 and "unknown logger 'nowhere'" in result.output and "tensorboard.v1" in result.output

    calls = []
    fake = types.SimpleNamespace(util=types.SimpleNamespace(generate_id=lambda: "run42"),
                                 init=lambda **kw: calls.append(("init", kw)) or fake_run)
    fake_run = types.SimpleNamespace(log=lambda data, step: calls.append(("log", data, step)),
                                     finish=lambda: calls.append(("finish",)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    (tmp_path / "recipe.json").write_text('{"kind": "hypernetwork"}')
    received = []

    @registry.loggers.register("test_memory.v1")
    class Memory:
        def __init__(self, prefix: str = ""):
            self.prefix = prefix

        def open(self, run_dir, start_step):
            received.append(("open", start_step))

        def log(self, record):
            received.append((self.prefix, record["step"]))

        def close(self):
            received.append("close")

    loggers = Loggers([ComponentSpec(name="wandb", project="p", mode="offline"),
                       ComponentSpec(name="test_memory", prefix="m")]).open(tmp_path, 4)
    loggers.log({"step": 5, "loss": 1.5, "skipped": "why", "eval": {"rougeL": 30.0}, "lr": None})
    loggers.close()
    assert calls[0] == ("init", {"dir": str(tmp_path), "id": "run42", "resume": "allow",
                                 "config": {"kind": "hypernetwork"}, "project": "p", "mode": "offline",
                                 "name": tmp_path.name})
    assert calls[1:] == [("log", {"loss": 1.5, "eval/rougeL": 30.0}, 5), ("finish",)]
    assert received == [("open", 4), ("m", 5), "close"]
    assert (tmp_path / "wandb-run-id.txt").read_text() == "run42\n"
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.5  # jsonl is always on


# ------------------------------------------------------------------------------------------------- recipes

def test_shipped_recipes_list_copy_and_run_by_name(tmp_path, monkeypatch):
    assert (REPO / "recipes").resolve() == recipes_folder().resolve()  # one source of truth
    assert len(builtin_names()) == len(list((REPO / "recipes").glob("*.json"))) >= 12
    result = invoke("recipes", "list")
    assert result.exit_code == 0
    rows = {line.split()[0]: line for line in result.output.splitlines()}
    assert set(rows) == set(builtin_names())
    assert re.search(r"HART \+ prefix\s+google/t5-large-lm-adapt\s+HART on S-NI", rows["hart_t5large_sni"])
    assert "HyperTuning + prefix" in rows["tiny_hypertuning"] and "FT-Zero-Shot" in rows["tiny_finetune"]
    assert "hybrid (autoregressive, no consistency)" in rows["tiny_ar_no_consistency"]

    result = invoke("recipes", "copy", "tiny_hart", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny_hart.json").read_bytes() == (recipes_folder() / "tiny_hart.json").read_bytes()
    assert "note: main_model.name_or_path is the relative path 'runs/demo/main/model'" in result.output
    result = invoke("recipes", "copy", "tiny_hart.json", tmp_path / "tiny_hart.json")
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke("recipes", "copy", "nope", tmp_path / "x.json")
    assert result.exit_code == 2 and "nope: not a built-in recipe" in result.output and not (tmp_path / "x.json").exists()
    assert invoke("recipes", "validate", "tiny_hart").exit_code == 0

    result = invoke("train", "no_such_recipe", "-o", tmp_path / "r")
    assert result.exit_code == 2 and "not the name of a built-in recipe" in result.output
    monkeypatch.chdir(tmp_path)  # the embedded tasks go to ./.cache, the run to runs/tiny_finetune
    result = invoke("train", "tiny_finetune", "--quiet", "--no-eval", "--set", "training.steps=1",
                    "--set", "training.batch_size=4", "--set", "training.micro_batch_size=4",
                    "--set", "main_model.tiny.num_layers=1", "--set", "main_model.tiny.num_decoder_layers=1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "tiny_finetune" / "model" / "config.json").is_file()


def test_guide_python_section_runs(runs, tmp_path, monkeypatch):
    text = (REPO / "docs" / "python-api.md").read_text()
    section = text.split("## A trained hypernetwork", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from_pretrained(\"runs/demo/hart\")" in code
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    shutil.copytree(runs["prefix"], tmp_path / "runs" / "demo" / "hart")
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "docs/python-api.md", "exec"), namespace)
    assert isinstance(namespace["several"], list) and len(namespace["several"]) == 2
    assert (tmp_path / "adapters" / "xy" / "prefix.safetensors").is_file()
    assert (tmp_path / "export" / "hart-tiny" / "hypergen_config.json").is_file()
