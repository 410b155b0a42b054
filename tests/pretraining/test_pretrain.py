"""HyperTuning-PT: texts cut into four chunks, text sources (tasks, local files, hub ids), the pretrain recipe kind
through the same trainer, and hypernetwork.init_from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import ByT5Tokenizer

from hypergen.recipe.builtin import builtin_recipe
from hypergen.cli import main
from hypergen.pretraining.corpus import TaskText, load_corpus, task_document
from hypergen.pretraining.chunks import ChunkSampler, PretrainCollator
from hypergen.errors import HypergenError, RecipeError
from hypergen.runs.folder import init_hypernet_from
from hypergen.pretraining.text import pretraining_text
from hypergen.recipe import PretrainRecipe, load_recipe, parse_recipe
from hypergen.recipe.pretrain import Corpus
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import load_tasks

REPO = Path(__file__).resolve().parents[2]

TOKENIZER = ByT5Tokenizer()
TINY = {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}}


def pretrain_recipe(tmp_path, corpus=None, steps=3, chunks=(12, 6, 5, 12), **data) -> dict:
    return {"kind": "pretrain", "main_model": TINY,
            "hypernetwork": {"decoder_layers": 1, "fusion_in_decoder": False,
                             "generator": {"name": "non_autoregressive"}},
            "peft": {"name": "prefix", "length": 2},
            "pretrain": {"chunk_lengths": list(chunks), **({"corpus": corpus} if corpus else {})},
            "data": {"source": "embedded", "path": str(tmp_path / "embedded"), "demo_style": "compact",
                     "include_definition": False, "num_positive": 4, "max_demo_length": 64,
                     "max_input_length": 16, "max_target_length": 8, "eval_instances_per_task": 2, **data},
            "training": {"steps": steps, "batch_size": 4, "micro_batch_size": 4, "optimizer": "adamw", "lr": 1e-3,
                         "log_every": 1, "checkpoint_every": 2, "seed": 1, "threads": 1}}


def finetune_recipe(tmp_path, init_from=None, steps=2, lr=1e-3, length=2) -> dict:
    recipe = pretrain_recipe(tmp_path, steps=steps)
    del recipe["kind"], recipe["pretrain"]
    recipe["data"]["queries_per_task"] = 2
    recipe["training"]["lr"] = lr
    recipe["peft"]["length"] = length
    if init_from:
        recipe["hypernetwork"]["init_from"] = str(init_from)
    return recipe


def invoke(tmp_path, command, recipe: dict, out, *extra):
    path = tmp_path / f"{out.name}.json"
    path.write_text(json.dumps(recipe))
    return CliRunner().invoke(main, [command, str(path), "-o", str(out), "--quiet", "--no-eval", *extra])


# ------------------------------------------------------------------------------------------- chunks, batches
def test_chunks_are_consecutive_windows_of_a_document_and_the_batch_reads_them_in_their_roles():
    documents = ["the quick brown fox jumps over the lazy dog " * 3, "pack my box with five dozen liquor jugs " * 2]
    sampler = ChunkSampler(documents, TOKENIZER, [7, 3, 4, 5], seed=0)
    texts = sampler.next_batch(6)
    tokenized = [TOKENIZER(d, add_special_tokens=False)["input_ids"] for d in documents]
    for chunks in texts:
        assert [len(chunks.first), len(chunks.second), len(chunks.third), len(chunks.fourth)] == [7, 3, 4, 5]
        window = chunks.first + chunks.second + chunks.third + chunks.fourth
        assert any(doc[i:i + 19] == window for doc in tokenized for i in range(len(doc) - 18))
    batch = PretrainCollator(TOKENIZER)(texts)
    eos = TOKENIZER.eos_token_id
    assert batch.demo_ids.shape == (6, 7 + 5 + 1) and batch.input_ids.shape == (6, 3 + 1)
    assert batch.labels.shape == (6, 4 + 1) and batch.task_index.tolist() == list(range(6))
    for row, chunks in enumerate(texts):  # hypernetwork: c1 then c4; main model: c2; labels: c3 (loss on c3 only)
        assert batch.demo_ids[row].tolist() == chunks.first + chunks.fourth + [eos]
        assert batch.input_ids[row].tolist() == chunks.second + [eos]
        assert batch.labels[row].tolist() == chunks.third + [eos]


def test_short_texts_are_skipped_and_counted_and_all_short_fails_naming_chunk_lengths():
    documents = ["short", "x" * 40, "tiny"]
    sampler = ChunkSampler(documents, TOKENIZER, [10, 5, 5, 10], seed=3)
    texts = sampler.next_batch(20)
    assert all(t.first == TOKENIZER("x" * 10, add_special_tokens=False)["input_ids"] for t in texts)
    report = sampler.report()
    assert report["texts_used"] == 20 and report["texts_skipped_too_short"] == report["texts_drawn"] - 20 > 0
    with pytest.raises(HypergenError, match=r"pretrain.chunk_lengths: \[10, 5, 5, 10\] need texts of 30 tokens"):
        ChunkSampler(["short", "tiny"], TOKENIZER, [10, 5, 5, 10], seed=0).next_batch(1)


def test_sampler_state_resumes_the_same_draws_and_counts():
    documents = [f"document {i} " * (i + 1) for i in range(20)]
    first = ChunkSampler(documents, TOKENIZER, [4, 4, 4, 4], seed=5)
    first.next_batch(7)
    state = json.loads(json.dumps(first.state_dict()))
    second = ChunkSampler(documents, TOKENIZER, [4, 4, 4, 4], seed=99)
    second.load_state_dict(state)
    assert second.next_batch(5) == first.next_batch(5) and second.report() == first.report()
    with pytest.raises(HypergenError, match="chunk_lengths"):
        ChunkSampler(documents, TOKENIZER, [4, 4, 4, 5], seed=5).load_state_dict(state)


# ------------------------------------------------------------------------------------------------ sources
def test_default_text_is_the_training_tasks_never_a_test_or_validation_task(tmp_path):
    recipe = parse_recipe(pretrain_recipe(tmp_path, validation_tasks=0.05))
    source = pretraining_text(recipe)
    train = load_tasks(recipe, "train")
    held_out = load_tasks(recipe, "test") + load_tasks(recipe, "validation")
    assert isinstance(source, TaskText) and source.task_names == [t.name for t in train]
    assert not {t.name for t in held_out} & set(source.task_names)
    stream = "".join(source[i] for i in range(len(source)))
    for task in held_out:  # every embedded task's "input output" lines are its own
        lines = task_document(task).splitlines()[1:]
        assert not [line for line in lines if f"\n{line}\n" in stream], task.name
    for task in train[:20]:  # and the check can fail: training tasks' lines are there
        assert f"\n{task_document(task).splitlines()[1]}\n" in stream
    sampler = ChunkSampler(source, TOKENIZER, [12, 6, 5, 12], seed=0)  # what the stream draws comes from them
    tokenized = [TOKENIZER(source[i], add_special_tokens=False)["input_ids"] for i in range(len(source))]
    for chunks in sampler.next_batch(8):
        window = chunks.first + chunks.second + chunks.third + chunks.fourth
        assert any(window == doc[i:i + 35] for doc in tokenized for i in range(len(doc) - 34))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
def test_local_corpus_files_load_through_datasets(tmp_path, kind):
    texts = ["first text of the corpus", "second one, a little longer than the first", "third"]
    if kind == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "corpus.parquet"
        pq.write_table(pa.table({"body": texts}), path)
    else:
        path = tmp_path / "corpus.txt"
        path.write_text("\n".join(texts) + "\n")
    field = "text" if kind == "txt" else "body"
    source = load_corpus(Corpus(path=str(path), text_field=field))
    assert [source[i] for i in range(len(source))] == texts
    folder_source = load_corpus(Corpus(path=str(tmp_path), text_field=field))  # a folder of such files
    assert len(folder_source) == 3


def test_corpus_errors_are_one_line_naming_the_field(tmp_path, monkeypatch):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"body": "some text"}) + "\n")
    with pytest.raises(HypergenError, match=r"pretrain.corpus.text_field: 'text' is not a column .*body"):
        load_corpus(Corpus(path=str(path)))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(HypergenError, match=r"pretrain.corpus.path: .*expected .jsonl/.json, .parquet or .txt"):
        load_corpus(Corpus(path=str(tmp_path / "*")))
    with pytest.raises(HypergenError, match=r"pretrain.corpus.path: .*missing.jsonl does not exist"):
        load_corpus(Corpus(path=str(tmp_path / "missing.jsonl")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HypergenError, match=r"^pretrain.corpus.path: cannot fetch 'nobody-here/no-such-corpus'") as e:
        load_corpus(Corpus(path="nobody-here/no-such-corpus"))
    assert "\n" not in str(e.value)


def test_shipped_pretrain_recipes_parse_and_c4_fails_fast_offline(tmp_path, monkeypatch):
    tiny = load_recipe(builtin_recipe("tiny_pretrain"))
    assert isinstance(tiny, PretrainRecipe) and tiny.pretrain.corpus is None
    assert not tiny.hypernetwork.fusion_in_decoder
    c4 = builtin_recipe("hypertuning_pt_t5large_c4")
    assert load_recipe(c4).pretrain.corpus.path == "allenai/c4"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["pretrain", str(c4), "-o", str(tmp_path / "c4"), "--quiet", "--set",
                                       f"main_model={json.dumps(TINY)}", "--set", "distributed=null", "--set",
                                       "training.optimizer=adamw"])
    assert result.exit_code == 2 and "pretrain.corpus.path: cannot fetch 'allenai/c4'" in result.output
    assert not (tmp_path / "c4").exists()


def test_pretrain_recipe_refuses_periodic_evaluation_and_three_chunks(tmp_path):
    recipe = pretrain_recipe(tmp_path)
    recipe["training"]["eval_every"] = 2
    with pytest.raises(RecipeError, match="training.eval_every: a pretrain run has no periodic evaluation"):
        parse_recipe(recipe)
    with pytest.raises(RecipeError, match="pretrain.chunk_lengths"):
        parse_recipe(pretrain_recipe(tmp_path, chunks=(4, 4, 4)))


# ----------------------------------------------------------------------------------- training, init_from
@pytest.fixture
def pretrained_run(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"text number {i}: " + "abcdefgh" * (i % 4)}) + "\n"
                              for i in range(30)))
    out = tmp_path / "pt"
    result = invoke(tmp_path, "pretrain", pretrain_recipe(tmp_path, {"path": str(corpus)}), out)
    assert result.exit_code == 0, result.output
    return out


def test_pretrain_command_trains_and_reports_skipped_texts(tmp_path, pretrained_run):
    records = [json.loads(line) for line in (pretrained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["loss"] > 0 for r in records)
    report = json.loads((pretrained_run / "pretrain_data.json").read_text())
    assert report["texts_used"] == 3 * 4 and report["texts_skipped_too_short"] > 0  # "text number 4: " is short
    assert report["texts_drawn"] == report["texts_used"] + report["texts_skipped_too_short"]
    result = invoke(tmp_path, "pretrain", finetune_recipe(tmp_path), tmp_path / "other")
    assert result.exit_code == 2 and "kind: expected 'pretrain'" in result.output
    result = CliRunner().invoke(main, ["eval", "--run", str(pretrained_run), "--quiet"])
    assert result.exit_code == 2 and "a pretrain run (HyperTuning-PT's first stage)" in result.output


def test_init_from_loads_the_pretrained_weights_and_training_continues(tmp_path, pretrained_run):
    pretrained = load_file(str(pretrained_run / "hypernetwork.safetensors"))
    fresh = assemble(parse_recipe(finetune_recipe(tmp_path)), torch.device("cpu")).method.module
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in pretrained.items())
    init_hypernet_from(fresh, pretrained_run)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in pretrained.items())
    # through `hypergen train`: a learning rate too small to move the weights far keeps them at the pretrained ones
    result = invoke(tmp_path, "train", finetune_recipe(tmp_path, pretrained_run, lr=1e-9), tmp_path / "ft")
    assert result.exit_code == 0, result.output
    trained = load_file(str(tmp_path / "ft" / "hypernetwork.safetensors"))
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in pretrained.items())
    assert len((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) == 2
    result = invoke(tmp_path, "train", finetune_recipe(tmp_path, pretrained_run, lr=1e-2), tmp_path / "ft2")
    assert result.exit_code == 0, result.output
    trained = load_file(str(tmp_path / "ft2" / "hypernetwork.safetensors"))
    assert any(not torch.allclose(trained[k], v, atol=1e-4) for k, v in pretrained.items())  # it does train


def test_init_from_errors_are_one_line_exit_2(tmp_path, pretrained_run):
    result = invoke(tmp_path, "train", finetune_recipe(tmp_path, pretrained_run, length=3), tmp_path / "a")
    assert result.exit_code == 2 and "hypernetwork.init_from:" in result.output
    assert "expected torch.float32" in result.output and "generator." in result.output  # names the parameter
    (tmp_path / "plain").mkdir()
    result = invoke(tmp_path, "train", finetune_recipe(tmp_path, tmp_path / "plain"), tmp_path / "b")
    assert result.exit_code == 2 and "hypernetwork.init_from:" in result.output
    assert "is not a hypergen run folder" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ the study's rows
def test_study_plans_table5s_pretraining_chain(tmp_path):
    from hypergen.reproduce import plan

    cfg = plan.StudyConfig(data=[("embedded", None), ("sni", str(tmp_path))])
    m0 = tmp_path / "embedded" / "main" / "model"
    for source, path in cfg.data:
        pre = parse_recipe(plan.pretrain_recipe(cfg, source, path, m0, seed=2))
        assert isinstance(pre, PretrainRecipe) and pre.training.steps == cfg.steps_for(source).pretrain
        assert pre.training.seed == 2 and not pre.hypernetwork.fusion_in_decoder and pre.pretrain.corpus is None
        pt = parse_recipe(plan.method_recipe(cfg, plan.METHODS["hypertuning_pt"], source, path, m0, seed=2))
        assert pt.hypernetwork.init_from == str(tmp_path / "embedded" / "pretrain-s2")
        assert plan.pretrain_run_dir(m0, 2) == tmp_path / "embedded" / "pretrain-s2"
        assert not pt.hypernetwork.fusion_in_decoder
        assert pt.hypernetwork.model_dump(exclude={"init_from"}) == pre.hypernetwork.model_dump(exclude={"init_from"})
        no_pt = parse_recipe(plan.method_recipe(cfg, plan.METHODS["hypertuning_no_fusion"], source, path, m0, 2))
        assert no_pt.hypernetwork.init_from is None and not no_pt.hypernetwork.fusion_in_decoder
        ht = parse_recipe(plan.method_recipe(cfg, plan.METHODS["hypertuning"], source, path, m0, 2))
        assert ht.hypernetwork.fusion_in_decoder and ht.hypernetwork.init_from is None
    assert [key for _, key in plan.TABLE5_PRETRAINING] == ["hypertuning_pt", "hypertuning_no_fusion", "hypertuning"]


def test_study_pretrains_once_per_seed_and_reports_the_chain(tmp_path, micro_study):
    from hypergen.reproduce.report import table5_pretraining

    study = micro_study("main=2, train=2, finetune=1, per_task=1, eval_instances=1, pretrain=3")
    out, report = tmp_path / "runs", tmp_path / "study.md"
    args = study + ["--out", str(out), "--report", str(report), "--seeds", "2", "--methods",
                    "hypertuning_pt,hypertuning_no_fusion"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = json.loads((out / "tiny-quick" / "results.json").read_text())["runs"]["embedded"]
    assert set(runs) == {"main", "pretrain", "hypertuning_pt", "hypertuning_no_fusion"}
    for seed in ("0", "1"):
        assert runs["pretrain"][seed]["pretrain_data"]["texts_used"] == 3 * 8
        run = out / "tiny-quick" / "embedded" / f"hypertuning_pt-s{seed}"
        assert json.loads((run / "recipe.json").read_text())["hypernetwork"]["init_from"] == str(
            out / "tiny-quick" / "embedded" / f"pretrain-s{seed}")
    assert first.stderr.count("pretrain s0: training 3 steps") == 1
    text = report.read_text()
    assert "hypernetwork pre-training and fusion-in-decoder" in text and "| HyperTuning-PT | ✓ | – |" in text
    assert "\n".join(table5_pretraining(runs)) in text
    assert table5_pretraining({"hart": {}}) == []
