"""The validation split (held back from the training tasks, scored by periodic evaluation) and `hypergen sweep`
(one run per grid point, the best picked on validation, resumable, bad --grid entries refused before training)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from hypergen.cli import main
from hypergen.errors import RecipeError
from hypergen.recipe import parse_recipe
from hypergen.runs.tasks import load_tasks, training_and_validation
from hypergen.training.checkpoint import list_checkpoints, load_latest_checkpoint
from tests.training.test_training import embedded_recipe


def validated_recipe(tmp_path, steps=2, **data) -> dict:
    recipe = embedded_recipe(tmp_path, steps=steps)
    recipe["data"].update({"validation_tasks": 0.003, "eval_instances_per_task": 2, **data})
    recipe["training"].update({"checkpoint_every": 1, "threads": 1})
    return recipe


def write(tmp_path, recipe: dict, name="recipe.json"):
    path = tmp_path / name
    path.write_text(json.dumps(recipe))
    return path


def test_validation_tasks_are_training_tasks_held_back(tmp_path):
    recipe = parse_recipe(validated_recipe(tmp_path))
    train, validation = training_and_validation(recipe)
    test = load_tasks(recipe, "test")
    every_train = {t.name for t in load_tasks(parse_recipe(embedded_recipe(tmp_path)), "train")}
    names = [t.name for t in validation]
    assert len(names) == round(0.003 * len(every_train)) and set(names) <= every_train
    assert not set(names) & {t.name for t in train} and not set(names) & {t.name for t in test}
    assert {t.name for t in train} | set(names) == every_train
    assert [t.name for t in load_tasks(recipe, "validation")] == names  # the same draw every time
    other_seed = parse_recipe(validated_recipe(tmp_path, validation_seed=1))
    assert [t.name for t in load_tasks(other_seed, "validation")] != names
    listed = parse_recipe(validated_recipe(tmp_path, validation_tasks=names[:2]))
    assert [t.name for t in load_tasks(listed, "validation")] == names[:2]


def test_validation_tasks_refuse_test_tasks_and_bad_fractions(tmp_path):
    test_name = load_tasks(parse_recipe(embedded_recipe(tmp_path)), "test")[0].name
    with pytest.raises(RecipeError, match=rf"data.validation_tasks: '{test_name}' is a test task"):
        training_and_validation(parse_recipe(validated_recipe(tmp_path, validation_tasks=[test_name])))
    with pytest.raises(RecipeError, match=r"data.validation_tasks: .*expected a fraction between 0 and 1 .*\(got 1\)"):
        parse_recipe(validated_recipe(tmp_path, validation_tasks=1))
    no_split = embedded_recipe(tmp_path)
    no_split["training"]["eval_every"] = 1
    with pytest.raises(RecipeError, match="training.eval_every: periodic evaluation scores the validation split"):
        parse_recipe(no_split)


def test_periodic_eval_scores_the_validation_split_and_training_never_samples_it(tmp_path):
    recipe = validated_recipe(tmp_path)
    recipe["training"].update({"eval_every": 1, "eval_tasks": 2, "eval_instances": 1})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(write(tmp_path, recipe)), "-o", str(out), "--quiet", "--no-eval"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"]["split"] for r in records] == ["validation", "validation"]
    assert all(r["eval"]["instances"] == 2 for r in records)  # 2 validation tasks x 1 instance
    _, _, _, state = load_latest_checkpoint(out)
    sampled = set(state["sampler"]["task_names"])
    assert len(sampled) == len({t.name for t in load_tasks(parse_recipe(recipe), "train")})
    assert not sampled & {t.name for t in load_tasks(parse_recipe(recipe), "validation")}


def sweep(tmp_path, recipe_path, out, *extra):
    return CliRunner().invoke(main, ["sweep", str(recipe_path), "--grid", "hypernetwork.regularizers.0.alpha=1,5",
                                     "--grid", "training.lr=0.001,0.01", "-o", str(out), "--quiet", *extra])


def test_sweep_picks_the_best_validation_run_tests_only_it_and_resumes(tmp_path):
    recipe_path = write(tmp_path, validated_recipe(tmp_path))
    out = tmp_path / "sweep"
    result = sweep(tmp_path, recipe_path, out)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "sweep.json").read_text())
    names = ["alpha=1,lr=0.001", "alpha=1,lr=0.01", "alpha=5,lr=0.001", "alpha=5,lr=0.01"]
    assert [row["name"] for row in table["runs"]] == names and table["metric"] == "rougeL"
    own = {name: json.loads((out / name / "validation" / "scores.json").read_text())["overall"]["rougeL"]
           for name in names}
    assert table["chosen"] == max(names, key=own.get)
    for name in names:  # each a normal run of the recipe with its grid values
        stored = json.loads((out / name / "recipe.json").read_text())
        alpha, lr = name.split(",")
        assert stored["hypernetwork"]["regularizers"][0]["alpha"] == float(alpha.split("=")[1])
        assert stored["training"]["lr"] == float(lr.split("=")[1])
        assert (out / name / "eval").exists() == (name == table["chosen"])  # only the chosen run sees the test set
    assert json.loads((out / "test" / "scores.json").read_text())["overall"] == table["test"]
    assert "| 5 | 0.01 |" in (out / "sweep.md").read_text()

    before = {name: (out / name / "hypernetwork.safetensors").stat().st_mtime_ns for name in names}
    refused = sweep(tmp_path, recipe_path, out)
    assert refused.exit_code == 2 and "--resume" in refused.output
    # an interrupted run: its final weights and scores gone, its step-1 checkpoint kept
    cut = out / names[1]
    (cut / "hypernetwork.safetensors").unlink()
    shutil.rmtree(cut / "validation")
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text(lines[0] + "\n")
    resumed = sweep(tmp_path, recipe_path, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("finished before") == 3 and f"resumed {cut} at step 1" in resumed.output
    for name in names:
        if name != names[1]:
            assert (out / name / "hypernetwork.safetensors").stat().st_mtime_ns == before[name]
    assert [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # the tiny runs all score about the same; give one a higher recorded validation score: the sweep picks it
    best = out / names[2] / "validation" / "scores.json"
    scores = json.loads(best.read_text())
    scores["overall"]["rougeL"] = max(own.values()) + 10
    best.write_text(json.dumps(scores))
    picked = sweep(tmp_path, recipe_path, out, "--resume")
    assert picked.exit_code == 0, picked.output
    again = json.loads((out / "sweep.json").read_text())
    assert again["chosen"] == names[2] and again["runs"][2]["validation"]["rougeL"] == scores["overall"]["rougeL"]
    assert (out / names[2] / "eval" / "scores.json").is_file()  # the newly chosen run is the one tested
    assert json.loads((out / "test" / "scores.json").read_bytes()) == json.loads(
        (out / names[2] / "eval" / "scores.json").read_bytes())


@pytest.mark.parametrize("entry,message", [
    ("training.lrr=1,2", "--grid training.lrr=1,2: "),
    ("hypernetwork.regularizers.0.alhpa=1,5", "unknown parameter(s) alhpa"),
    ("training.lr=0.1,-1", "--grid training.lr=0.1,-1: "),
    ("training.lr", "--grid training.lr: expected KEY.PATH=V1,V2"),
])
def test_sweep_refuses_a_bad_grid_entry_before_training(tmp_path, entry, message):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", str(write(tmp_path, validated_recipe(tmp_path))), "--grid", entry,
                                       "-o", str(out), "--quiet"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_sweep_needs_a_validation_split(tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", str(write(tmp_path, embedded_recipe(tmp_path))), "--grid",
                                       "training.lr=0.1,0.2", "-o", str(out)])
    assert result.exit_code == 2 and "data.validation_tasks: not set" in result.output and not out.exists()
