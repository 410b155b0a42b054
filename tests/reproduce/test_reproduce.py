"""The reproduction study: the demos control, the per-task baselines, the method recipes, and a whole (very short)
study run through benchmarks/reproduce.py, read back on a second run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hypergen.baselines import PerTaskTuner, demos_batch, tune_and_predict
from hypergen.cli import main
from hypergen.errors import HypergenError
from hypergen.data.collate import Collator
from hypergen.data.tasks import Example, Task, with_demos_of_other_tasks
from hypergen.recipe import Data, parse_recipe
from hypergen.reproduce import plan
from hypergen.reproduce.plan import METHODS, Scale, StudyConfig, main_recipe, method_recipe
from hypergen.reproduce.report import alpha_table, control_table, findings, mean_sd, table2

from tests.training.test_training import embedded_recipe, train

REPO = Path(__file__).resolve().parents[2]


def _task(name: str, n: int = 3) -> Task:
    return Task(name, f"definition of {name}", [Example(f"{name}-demo{i}", (f"{name}-out{i}",)) for i in range(2)],
                [Example(f"{name}-x{i}", (f"{name}-y{i}",)) for i in range(n)], "test")


def test_other_task_demos_rotate_demos_and_keep_instances():
    tasks = [_task("a"), _task("b"), _task("c")]
    swapped = with_demos_of_other_tasks(tasks)
    assert [t.name for t in swapped] == ["a", "b", "c"]
    assert [t.instances for t in swapped] == [t.instances for t in tasks]
    assert [t.definition for t in swapped] == ["definition of b", "definition of c", "definition of a"]
    assert swapped[2].positives == tasks[0].positives
    assert tasks[0].positives[0].input == "a-demo0"  # the originals are untouched
    with pytest.raises(ValueError, match="at least two tasks"):
        with_demos_of_other_tasks(tasks[:1])


def test_eval_other_demos_writes_beside_the_own_demos_scores(tmp_path):
    run = train(tmp_path, embedded_recipe(tmp_path, steps=2), tmp_path / "run")
    runner = CliRunner()
    own = runner.invoke(main, ["eval", "--run", str(run), "--quiet"], catch_exceptions=False)
    assert own.exit_code == 0, own.output
    other = runner.invoke(main, ["eval", "--run", str(run), "--other-demos", "--quiet"], catch_exceptions=False)
    assert other.exit_code == 0, other.output
    assert "eval-control-other" in other.output
    own_scores = json.loads((run / "eval" / "scores.json").read_text())
    other_scores = json.loads((run / "eval-control-other" / "scores.json").read_text())
    assert own_scores["per_task"].keys() == other_scores["per_task"].keys()
    assert own_scores["overall"]["instances"] == other_scores["overall"]["instances"]
    # the same queries were decoded: only the demos (hence the generated prefixes) differ
    own_inputs = [json.loads(line)["input"] for line in (run / "eval" / "predictions.jsonl").open()]
    other_inputs = [json.loads(line)["input"] for line in (run / "eval-control-other" / "predictions.jsonl").open()]
    assert own_inputs == other_inputs


def test_per_task_tuner_learns_the_demos_and_gives_the_stock_model_back(tiny_main):
    from transformers import ByT5Tokenizer

    data = Data(source="embedded", num_positive=2, max_demo_length=32, max_input_length=16, max_target_length=8,
                include_definition=False, demo_style="compact")
    collator = Collator(ByT5Tokenizer(), data)
    task = _task("t")
    batch = demos_batch(collator, task, "cpu")
    stock = {k: v.clone() for k, v in tiny_main.state_dict().items()}
    for kind, lr in (("prefix", 1e-1), ("lora", 5e-2)):
        tuner = PerTaskTuner(tiny_main, kind, lr, seed=0, prefix_length=2, lora_rank=2)
        losses = [tuner.step(batch) for _ in range(20)]
        assert losses[-1] < losses[0] * 0.9, (kind, losses)
        assert tuner.trainable_parameters > 0
        tuner.close()
        assert tiny_main.state_dict().keys() == stock.keys()
        assert all(torch.equal(tiny_main.state_dict()[k], v) for k, v in stock.items()), kind
    records = tune_and_predict(tiny_main, collator, task, "prefix", 2, 1e-2, 0, 2, 4, 8, "cpu", prefix_length=2)
    assert [r["input"] for r in records] == ["t-x0", "t-x1"] and records[0]["references"] == ["t-y0"]


@pytest.mark.parametrize("scale", sorted(plan.SCALES))
def test_every_method_is_a_valid_recipe_of_the_same_code(scale, tmp_path):
    real = plan.SCALES[scale].main_model is not None  # no M0, S-NI only
    cfg = StudyConfig(data=[("sni", str(tmp_path))] if real else [("embedded", None), ("sni", str(tmp_path))],
                      scale=scale)
    for source, path in cfg.data:
        if not real:
            parse_recipe(main_recipe(cfg, source, path))
        for method in METHODS.values():
            if method.kind == "per_task":
                continue
            recipe = parse_recipe(method_recipe(cfg, method, source, path, tmp_path / "m0", seed=1))
            assert recipe.training.seed == 1
            if method.kind == "hypernet":
                assert recipe.hypernetwork.generator.name == method.generator["name"]
                assert [r.name for r in recipe.hypernetwork.regularizers] == (
                    ["local_consistency"] if method.consistency else [])
    source, path = cfg.data[0]
    hart = method_recipe(cfg, METHODS["hart_reverse"], source, path, tmp_path, 0)
    assert hart["hypernetwork"]["generator"] == {"name": "autoregressive", "reverse": True}
    assert hart["hypernetwork"]["regularizers"] == [{"name": "local_consistency", "alpha": plan.SCALES[scale].alpha}]
    cfg.alpha = 3.0  # --alpha: every method with the regularizer, and only those
    assert method_recipe(cfg, METHODS["hart"], source, path, tmp_path, 0)["hypernetwork"]["regularizers"] == [
        {"name": "local_consistency", "alpha": 3.0}]
    assert method_recipe(cfg, METHODS["hypertuning_ar"], source, path, tmp_path, 0)["hypernetwork"][
        "regularizers"] == []


def _results(values: dict[str, list[tuple[float, float]]]) -> dict:
    """A results['runs'][data] dict: method -> seeds of (own ROUGE-L, other-demos ROUGE-L)."""
    return {key: {str(seed): {"overall": {"exact_match": 0.0, "rougeL": own, "instances": 4},
                              "other_demos": {"exact_match": 0.0, "rougeL": other, "instances": 4}}
                  for seed, (own, other) in enumerate(seeds)} for key, seeds in values.items()}


def test_report_tables_and_findings_follow_the_numbers():
    assert mean_sd([]) == "—" and mean_sd([2.0]) == "2.00" and mean_sd([1.0, 3.0]) == "2.00 ± 1.41"
    runs = _results({"hart": [(30.0, 10.0), (32.0, 12.0)], "hypertuning": [(35.0, 34.5), (35.0, 35.5)]})
    lines = "\n".join(table2(runs))
    assert "| HART | 0.00 ± 0.00 | 31.00 ± 1.41 | 2 |" in lines
    control = "\n".join(control_table(runs))
    assert "| HART | 31.00 ± 1.41 | 11.00 ± 1.41 | +20.00 |" in control
    text = "\n".join(findings(runs))
    assert "HART is below HyperTuning (31.00 vs 35.00" in text
    assert "HART with another task's demos: ROUGE-L drops by 20.00 (it uses the demos)" in text
    assert "HyperTuning with another task's demos: ROUGE-L rises by 0.00" not in text
    assert "HyperTuning with another task's demos: ROUGE-L" in text and "hardly adapts" in text
    rising = "\n".join(findings(_results({"hart": [(20.0, 22.0)]})))  # better with another task's demos
    assert "HART with another task's demos: ROUGE-L rises by 2.00 (higher without its own demos" in rising


def test_study_runs_every_kind_of_method_reports_and_reads_back(tmp_path, micro_study):
    """benchmarks/reproduce.py end to end at a micro size: M0, a finetune baseline, a per-task baseline and two
    hypernetworks, the control, the tables and the three figures; a second run retrains nothing."""
    study = micro_study("main=4, train=4, finetune=2, per_task=2, eval_instances=2")
    out, report = tmp_path / "runs", tmp_path / "report" / "study.md"
    args = study + ["--out", str(out), "--report", str(report), "--methods",
                    "hypertuning,hart,hypertuning_ar,ft_few_shot,lora"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "tiny-quick" / "results.json").read_text())
    runs = results["runs"]["embedded"]
    assert set(runs) == {"main", "hypertuning", "hart", "hypertuning_ar", "ft_few_shot", "lora"}
    for key in ("hypertuning", "hart", "ft_few_shot"):
        assert {"overall", "other_demos", "run"} <= set(runs[key]["0"]), key
    assert runs["lora"]["0"]["overall"]["instances"] == runs["hart"]["0"]["overall"]["instances"]
    text = report.read_text()
    for heading in ("Table 2 analogue", "Table 5 analogue", "Control: another task's demos", "Figure 3 analogue",
                    "Figure 4 analogue", "Figure 1 analogue"):
        assert heading in text
    figures = report.parent / "study"
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "embedded-fig1-attention.png", "embedded-fig3-autoregressive.png", "embedded-fig4-consistency.png"]
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert " steps -> " not in second.stderr and second.stderr.count("finished before") == 6
    report.unlink()
    again = subprocess.run(args + ["--report-only"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert " steps -> " not in again.stderr and "Table 2 analogue" in report.read_text()
    bad = subprocess.run(args[:-1] + ["hart,bogus"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "--methods: unknown bogus" in bad.stderr


def test_alpha_grid_holds_back_one_validation_split_for_every_method(tmp_path):
    cfg = StudyConfig(data=[("embedded", None)], alpha_grid=(1.0, 5.0))
    sections = [main_recipe(cfg, "embedded", None)["data"]] + [
        method_recipe(cfg, m, "embedded", None, tmp_path, 0)["data"] for m in METHODS.values() if m.kind != "per_task"]
    assert all(s["validation_tasks"] == plan.VALIDATION_FRACTION["embedded"] for s in sections)
    assert "validation_tasks" not in main_recipe(StudyConfig(data=[("embedded", None)]), "embedded", None)["data"]
    assert plan.alpha_grid_entry((1.0, 5.0, 10.0, 20.0)) == "hypernetwork.regularizers.0.alpha=1,5,10,20"
    fixed = method_recipe(cfg, METHODS["hart"], "embedded", None, tmp_path, 0, alpha=10.0)
    assert fixed["hypernetwork"]["regularizers"] == [{"name": "local_consistency", "alpha": 10.0}]
    runs = {"hart": {"0": {"alpha": 5.0, "overall": {"rougeL": 40.0}, "alpha_sweep": {
        "1": {"rougeL": 10.0}, "5": {"rougeL": 12.5}}}}, "hypertuning": {"0": {"overall": {"rougeL": 1.0}}}}
    assert alpha_table(runs)[2] == "| HART | 0 | 10.00 | 12.50 | 5 | 40.00 |"
    assert alpha_table({"hypertuning": runs["hypertuning"]}) == []


def test_study_sweeps_alpha_on_validation_and_tests_the_chosen_run(tmp_path, micro_study):
    study = micro_study("main=2, train=2, finetune=2, per_task=2, eval_instances=1",
                        "plan.VALIDATION_FRACTION['embedded'] = 0.002")
    out, report = tmp_path / "runs", tmp_path / "report" / "study.md"
    args = study + ["--out", str(out), "--report", str(report), "--methods", "hart,hart_no_ar", "--alpha-grid", "1,5",
                    "--seeds", "2"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "tiny-quick" / "results.json").read_text())
    hart = results["runs"]["embedded"]["hart"]["0"]
    # one sweep per data source (HART, seed 0); every other run with local consistency trains the chosen alpha
    assert results["alpha_chosen"]["embedded"] == {"alpha": hart["alpha"], "method": "hart", "seed": 0}
    assert first.stderr.count("sweeping alpha") == 1
    for key, seed in (("hart", "1"), ("hart_no_ar", "0"), ("hart_no_ar", "1")):
        entry = results["runs"]["embedded"][key][seed]
        trained = json.loads((Path(entry["run"]) / "recipe.json").read_text())
        assert entry["alpha"] == hart["alpha"] == trained["hypernetwork"]["regularizers"][0]["alpha"]
        assert "alpha_sweep" not in entry and Path(entry["run"]).name == f"{key}-s{seed}"
    sweep_dir = out / "tiny-quick" / "embedded" / "hart-s0"
    recorded = {a: json.loads((sweep_dir / f"alpha={a}" / "validation" / "scores.json").read_text())["overall"]
                for a in ("1", "5")}
    assert hart["alpha_sweep"] == recorded
    assert hart["alpha"] == float(max(recorded, key=lambda a: recorded[a]["rougeL"]))
    assert hart["run"] == str(sweep_dir / f"alpha={hart['alpha']:g}")
    assert hart["overall"] == json.loads((Path(hart["run"]) / "eval" / "scores.json").read_text())["overall"]
    assert "alpha, chosen on the validation split" in report.read_text()
    assert f"alpha = {hart['alpha']:g} for this data set: chosen from 1, 5 by validation ROUGE-L of HART" \
        in report.read_text()
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert second.returncode == 0 and " steps -> " not in second.stderr and "training alpha" not in second.stderr
    both = subprocess.run(args + ["--alpha", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert both.returncode == 2 and "--alpha-grid: give --alpha" in both.stderr


def test_multi_task_peft_and_no_fusion_rows_are_recipes_of_the_trainer_and_ft_gets_the_same_steps(tmp_path):
    cfg = StudyConfig(data=[("embedded", None)])
    row = lambda key: method_recipe(cfg, METHODS[key], "embedded", None, tmp_path, 0)  # noqa: E731
    for key, peft in (("prefix_few_shot", {"name": "prefix", "length": plan.SCALES["tiny"].prefix_length}),
                      ("lora_few_shot", {"name": "lora", "rank": plan.LORA_RANK})):
        recipe = row(key)
        assert recipe["hypernetwork"]["generator"] == {"name": "learned_states"} and recipe["peft"] == peft
        assert recipe["hypernetwork"]["fusion_in_decoder"] is False and recipe["data"]["demos_in_input"] is True
        parse_recipe(recipe)
    no_fusion = row("hypertuning_no_fusion")
    assert no_fusion["hypernetwork"]["fusion_in_decoder"] is False and "demos_in_input" not in no_fusion["data"]
    assert no_fusion["hypernetwork"]["generator"] == row("hypertuning")["hypernetwork"]["generator"]
    assert row("hypertuning")["hypernetwork"]["fusion_in_decoder"] is True
    for profile in ("full", "quick"):
        for source in ("embedded", "sni"):
            steps = StudyConfig(data=[], profile=profile).steps_for(source)
            assert steps.finetune == steps.train
    assert row("ft_few_shot")["training"]["steps"] == row("hart")["training"]["steps"]
    assert StudyConfig(data=[], steps=7).steps_for("embedded").finetune == 7
    assert METHODS["prefix_tuning"].label == "Prefix-Tuning, per task by backprop (what one forward pass replaces)"
    assert {"prefix_few_shot", "lora_few_shot", "hypertuning_no_fusion"} <= set(plan.CONTROL) & set(plan.TABLE2)


def test_report_gives_every_control_its_gap_and_sd_and_states_the_caveat(tmp_path):
    from hypergen.reproduce.report import table5, write_report

    seeds = [{"overall": {"exact_match": 0.0, "rougeL": own, "instances": 4},
              "other_demos": {"exact_match": 0.0, "rougeL": own - 5, "instances": 4},
              "random_demos": {"exact_match": 0.0, "rougeL": own - gap, "instances": 4},
              "no_demos": {"exact_match": 0.0, "rougeL": own, "instances": 4}} for own, gap in ((30.0, 2.0), (34.0, 6.0))]
    runs = {"prefix_few_shot": dict(enumerate(seeds)), "hypertuning_no_fusion": {"0": seeds[0]}}
    rows = {line.split(" | ")[0]: line for line in control_table(runs)}
    assert rows["| Prefix-Tuning (multi-task, FT-Few-Shot)"] == (
        "| Prefix-Tuning (multi-task, FT-Few-Shot) | 32.00 ± 2.83 | 27.00 ± 2.83 | +5.00 | 0.00 | 28.00 ± 0.00 | "
        "+4.00 | 2.83 | 32.00 ± 2.83 | +0.00 | 0.00 |")
    assert rows["| HyperTuning w/o fusion-in-decoder"].endswith("| 30.00 | +0.00 | — |")  # one seed: no sd
    text = "\n".join(findings(runs))
    assert "Prefix-Tuning (multi-task, FT-Few-Shot) with random demos: ROUGE-L drops by 4.00 (it uses" in text
    assert "with no demos: ROUGE-L does not change (under 1 point" in text
    assert "| - both, - fusion-in-decoder (HyperTuning w/o fusion) | – | – | – | 0.00 | 30.00 |" in "\n".join(
        table5(runs))
    results = {"config": {"name": "t", "command": "c", "seeds": 2, "scale_settings": {},
                          "steps": {"embedded": {"train": 9, "finetune": 9}}}, "runs": {"embedded": runs}}
    report = write_report(results, tmp_path / "r.md", figures=False).read_text()
    assert "**Main caveat.** M0, the frozen main model every method starts from, is itself multi-task fine-tuned" in report
    assert "embedded: the FT baselines get 9 optimizer steps, the same as each hypernetwork" in report


def test_the_real_scale_is_the_packaged_model_in_its_chat_template_with_the_rows_of_the_real_study(tmp_path):
    cfg = StudyConfig(data=[("sni", str(tmp_path))], scale="smollm2")
    scale = plan.SCALES["smollm2"]
    row = lambda key: parse_recipe(method_recipe(cfg, METHODS[key], "sni", str(tmp_path), tmp_path, 0))  # noqa
    hart, hart_alone, in_context = row("hart"), row("hart_no_fusion"), row("frozen_in_context")
    for recipe in (hart, hart_alone, in_context):
        assert recipe.main_model.name_or_path == "smollm2-135m-instruct" and recipe.data.prompt == "chat"
        assert recipe.data.max_demo_length == 384 and recipe.evaluation.max_new_tokens == 32
    assert hart.hypernetwork.fusion_in_decoder and not hart_alone.hypernetwork.fusion_in_decoder
    assert hart.peft.name == "lora" and hart.peft.params["rank"] == scale.lora["rank"]
    assert row("lora_few_shot").data.demos_in_input and row("lora_few_shot").hypernetwork.generator.name == \
        "learned_states"
    assert hart.training.steps == cfg.steps_for("sni").train and hart.training.max_grad_norm == 1.0
    assert set(plan.FROZEN) <= set(scale.methods) and not any(METHODS[m].kind == "finetune" for m in scale.methods)
    with pytest.raises(KeyError):  # the real scale has no profile for the embedded family
        cfg.steps_for("embedded")
    for bad in (["--data", "embedded"], ["--methods", "ft_few_shot,hart"]):
        result = CliRunner().invoke(reproduce_cli(), ["--scale", "smollm2", "--quick", *bad,
                                                      "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and result.output.startswith("error: --") and "Traceback" not in result.output
        assert not (tmp_path / "out").exists()


def reproduce_cli():
    """``hypergen reproduce`` as ``python benchmarks/reproduce.py`` runs it (the script is the same command)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_script", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main is __import__("hypergen.cli", fromlist=["main"]).main.commands["reproduce"]
    return module.main


def test_paired_comparisons_count_the_tasks_each_way_from_the_runs_per_task_scores(tmp_path):
    from hypergen.reproduce.paired import paired, paired_table

    def run(name: str, scores: dict[str, float]) -> dict:
        folder = tmp_path / name / "eval"
        folder.mkdir(parents=True)
        (folder / "scores.json").write_text(json.dumps({"overall": {}, "per_task": {
            task: {"rougeL": value, "exact_match": 0.0, "instances": 2} for task, value in scores.items()}}))
        return {"run": str(folder.parent), "overall": {"rougeL": 0.0, "exact_match": 0.0, "instances": 2}}

    runs = {"hart": {"0": run("h0", {"a": 10.0, "b": 5.0, "c": 1.0}), "1": run("h1", {"a": 20.0, "b": 5.0, "c": 1.2})},
            "frozen_in_context": {"0": run("f0", {"a": 12.0, "b": 9.0, "c": 1.0, "d": 50.0})}}
    # per task, HART's mean over seeds: a 15, b 5, c 1.1; against a 12, b 9, c 1.0 (d: HART has no score)
    assert paired(runs, "hart", "frozen_in_context") == {"tasks": 3, "ahead": 1, "behind": 1, "tied": 1,
                                                          "mean_difference": pytest.approx((3 - 4 + 0.1) / 3)}
    assert paired(runs, "hart", "hypertuning") is None
    assert paired_table(runs)[2].startswith("| HART vs Frozen model, in context") and "| 3 | 1 | 1 | 1 | -0.30 |" \
        in paired_table(runs)[2]


def test_the_full_study_chooses_alpha_from_the_papers_grid_unless_one_is_given():
    from hypergen.commands import reproduce as script

    assert script._alpha_grid(None, None, quick=False) == plan.PAPER_ALPHAS == (1.0, 5.0, 10.0, 20.0)
    assert script._alpha_grid(None, None, quick=True) is None  # --quick: alpha fixed (time)
    assert script._alpha_grid(None, 5.0, quick=False) is None  # --alpha fixes it
    assert script._alpha_grid("none", None, quick=False) is None
    assert script._alpha_grid("2,4", None, quick=True) == (2.0, 4.0)
    with pytest.raises(HypergenError, match="--alpha-grid: expected distinct positive numbers"):
        script._alpha_grid("1,1", None, quick=False)


def test_a_report_takes_rows_run_by_other_studies_and_names_where_they_came_from(tmp_path):
    from hypergen.reproduce.report import include_rows, write_report

    def results(rows: dict[str, float], command: str) -> dict:
        return {"config": {"name": "smollm2-full", "command": command, "seeds": 1, "scale": "smollm2",
                           "scale_settings": {}, "steps": {}},
                "runs": {"sni-mini": {key: {"0": {"overall": {"exact_match": 0.0, "rougeL": value, "instances": 5}}}
                                      for key, value in rows.items()}}, "wall_s": 10.0}

    other = tmp_path / "results.json"
    other.write_text(json.dumps(results({"hart": 9.0, "lora_few_shot": 20.0}, "python reproduce.py --methods lora")))
    merged = include_rows(results({"hart": 8.0, "frozen_in_context": 13.0}, "python reproduce.py"), [str(other)])
    rows = merged["runs"]["sni-mini"]
    assert rows["hart"]["0"]["overall"]["rougeL"] == 8.0  # this study's own row wins
    assert rows["lora_few_shot"]["0"]["overall"]["rougeL"] == 20.0
    report = write_report(merged, tmp_path / "r.md", figures=False).read_text()
    assert "| LoRA (multi-task, FT-Few-Shot) | 0.00 | 20.00 | 1 |" in report
    assert f"Rows from another study ({other}, `python reproduce.py --methods lora`" in report
    assert "sni-mini/lora_few_shot" in report and "sni-mini/hart," not in report
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(HypergenError, match=r"--include: .*bad.json is not a study's results.json"):
        include_rows(merged, [str(tmp_path / "bad.json")])
