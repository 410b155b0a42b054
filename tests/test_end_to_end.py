"""End to end through the CLI: train on the real S-NI task files, loss falls, eval writes per-task scores;
recipes and registry commands; bad input gives one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hypergen.cli import main

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(data_path: Path, generator: str = "autoregressive", steps: int = 60) -> dict:
    return {
        "main_model": {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                                "num_heads": 4}},
        "hypernetwork": {"decoder_layers": 1, "generator": {"name": generator},
                         "regularizers": [{"name": "local_consistency", "alpha": 1.0}]},
        "peft": {"name": "prefix", "length": 4},
        "data": {"source": "sni", "path": str(data_path), "max_demo_length": 192, "max_input_length": 64,
                 "max_target_length": 24, "queries_per_task": 4, "eval_instances_per_task": 3},
        "training": {"steps": steps, "batch_size": 8, "micro_batch_size": 8, "optimizer": "adamw", "lr": 1e-2,
                     "log_every": 1, "checkpoint_every": 20, "seed": 0},
        "evaluation": {"max_new_tokens": 8, "batch_size": 8},
    }


def subset(sni_algo: Path, tmp_path: Path) -> Path:
    """The real task files with a small split (4 train, 2 test tasks) to keep the test fast."""
    folder = tmp_path / "sni"
    (folder / "splits" / "default").mkdir(parents=True)
    (folder / "tasks").symlink_to(sni_algo / "tasks")
    train = (sni_algo / "splits/default/train_tasks.txt").read_text().split()[:4]
    test = (sni_algo / "splits/default/test_tasks.txt").read_text().split()[:2]
    (folder / "splits/default/train_tasks.txt").write_text("\n".join(train) + "\n")
    (folder / "splits/default/test_tasks.txt").write_text("\n".join(test) + "\n")
    return folder


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("generator", ["autoregressive", "non_autoregressive"])
def test_train_loss_falls_and_eval_scores_per_task(sni_algo, tmp_path, generator):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(tiny_recipe(subset(sni_algo, tmp_path), generator)))
    out = tmp_path / "run"
    result = run("train", str(recipe), "--output", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:10]) / 10, losses
    assert (out / "hypernetwork.safetensors").is_file() and (out / "recipe.json").is_file()
    assert any((out / "checkpoints").glob("step-*/manifest.json"))
    scores = json.loads((out / "eval" / "scores.json").read_text())
    assert set(scores["per_task"]) == set((tmp_path / "sni/splits/default/test_tasks.txt").read_text().split())
    assert scores["overall"]["instances"] == 6
    predictions = (out / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 6 and {"task", "prediction", "references"} <= set(json.loads(predictions[0]))

    again = run("eval", "--run", str(out), "--max-instances", "2", "--quiet")
    assert again.exit_code == 0 and "overall" in again.output
    assert json.loads((out / "eval" / "scores.json").read_text())["overall"]["instances"] == 4


def test_run_folder_is_not_overwritten_without_flag(sni_algo, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(tiny_recipe(subset(sni_algo, tmp_path), steps=2)))
    out = tmp_path / "run"
    assert run("train", str(recipe), "-o", str(out), "--quiet", "--no-eval").exit_code == 0
    refused = run("train", str(recipe), "-o", str(out), "--quiet", "--no-eval")
    assert refused.exit_code == 2 and "already holds a run" in refused.output


def test_recipes_validate_all_shipped_recipes():
    files = sorted(str(p) for p in (REPO / "recipes").glob("*.json"))
    assert len(files) >= 7
    result = run("recipes", "validate", *files)
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok") == len(files)


def test_recipe_descriptions_attribute_no_zero_stage_to_the_paper():
    """The paper says it used "deepspeed library for distributed training"; it names no ZeRO stage, so no sentence
    of a recipe description may tie one to it."""
    import re

    for path in sorted((REPO / "recipes").glob("*.json")):
        for sentence in re.split(r"(?<=[.;])\s", json.loads(path.read_text())["description"]):
            if "paper" in sentence:
                assert not re.search(r"(ZeRO|stage) ?[0-3]", sentence), (path.name, sentence)


def test_recipe_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"main_model": {"tiny": {"d_model": "big"}}, "data": {"source": "embedded"},
                               "surprise": 1}))
    result = run("recipes", "validate", str(bad))
    assert result.exit_code == 2
    assert "main_model.tiny.d_model" in result.output and "surprise: unknown key" in result.output
    assert "Traceback" not in result.output


def test_unknown_component_lists_known_names(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"main_model": {"tiny": {}}, "data": {"source": "embedded"},
                               "hypernetwork": {"generator": {"name": "autoregresive"}}}))
    result = run("recipes", "validate", str(bad))
    assert result.exit_code == 2
    assert "hypernetwork.generator.name" in result.output
    assert "autoregressive.v1" in result.output and "non_autoregressive.v1" in result.output


def test_unknown_component_parameter_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"main_model": {"tiny": {}}, "data": {"source": "embedded"},
                               "hypernetwork": {"regularizers": [{"name": "local_consistency", "alpah": 1}]}}))
    result = run("recipes", "validate", str(bad))
    assert result.exit_code == 2 and "hypernetwork.regularizers.0" in result.output and "alpah" in result.output


def test_set_overrides_and_schema(tmp_path):
    result = run("recipes", "validate", str(REPO / "recipes/tiny_hart.json"), "--set", "training.steps=-1")
    assert result.exit_code == 2 and "training.steps" in result.output
    schema = json.loads(run("recipes", "schema").output)
    assert "hypernetwork" in schema["hypernetwork"]["properties"]


def test_unreachable_hub_model_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run("train", str(REPO / "recipes/hart_t5large_sni.json"), "-o", str(tmp_path / "run"),
                 "--set", f"data.path={tmp_path}")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "google/t5-large-lm-adapt" in lines[0] and "name_or_path" in lines[0]
    assert not (tmp_path / "run").exists()


def test_registry_list_shows_every_builtin():
    result = run("registry", "list")
    for name in ("autoregressive.v1", "non_autoregressive.v1", "layerwise_mlp.v1", "local_consistency.v1",
                 "prefix.v1"):
        assert name in result.output


def test_every_command_has_help():
    for command in (["train"], ["finetune"], ["eval"], ["compare"], ["recipes", "validate"], ["recipes", "schema"],
                    ["registry", "list"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output
