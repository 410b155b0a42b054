"""P3: loading subsets from a local folder, 16-shot sampling, rank classification, malformed subsets."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ByT5Tokenizer

from hypergen.data.collate import Collator
from hypergen.data.p3 import T0_HELD_OUT, T0_TRAIN_DATASETS, held_out_dataset, load_p3
from hypergen.data.sampling import TaskSampler
from hypergen.errors import TaskFormatError
from hypergen.evaluation.rank import evaluate_choices
from hypergen.recipe import Data, Evaluation
from hypergen.training.methods import FinetuneMethod, sequence_log_likelihood


def write_subset(root, name, split, rows):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rte_rows(n, offset=0):
    return [{"inputs_pretokenized": f"premise {i} hypothesis {i} ?", "targets_pretokenized": ["yes", "no"][i % 2],
             "answer_choices": ["yes", "no"]} for i in range(offset, offset + n)]


@pytest.fixture
def p3_folder(tmp_path):
    root = tmp_path / "p3"
    write_subset(root, "ag_news_classify", "train",
                 [{"inputs_pretokenized": f"news {i}", "targets_pretokenized": "World"} for i in range(40)])
    write_subset(root, "xsum_summarize", "train",  # too long on average: filtered out
                 [{"inputs_pretokenized": "word " * 400, "targets_pretokenized": "short"} for _ in range(5)])
    write_subset(root, "super_glue_rte_GPT_3_style", "train", rte_rows(20))
    write_subset(root, "super_glue_rte_GPT_3_style", "validation", rte_rows(6, offset=100))
    write_subset(root, "unrelated_dataset_x", "train", rte_rows(5))
    return root


def test_load_local_folder_filters_and_splits(p3_folder):
    train = load_p3(p3_folder, T0_TRAIN_DATASETS, "train", max_avg_input_tokens=320,
                    count_tokens=lambda text: len(text.split()))
    assert [t.name for t in train] == ["ag_news_classify"]
    held_out = load_p3(p3_folder, T0_HELD_OUT.values(), "validation", shots=16)
    assert [t.name for t in held_out] == ["super_glue_rte_GPT_3_style"]
    task = held_out[0]
    assert len(task.positives) == 16 and len(task.instances) == 6
    assert task.instances[0].choices == ("yes", "no") and task.instances[0].outputs == ("yes",)
    assert {p.input for p in task.positives}.isdisjoint({i.input for i in task.instances})
    assert held_out_dataset(task.name) == "rte"


def test_sixteen_shots_never_include_the_query(p3_folder):
    train = load_p3(p3_folder, ["ag_news"], "train")
    sampler = TaskSampler(train, seed=0, queries_per_task=2, shots=16)
    for _ in range(50):
        for task, queries in sampler.next_batch(2):
            assert len(task.positives) == 16
            assert not {id(q) for q in queries} & {id(p) for p in task.positives}
    assert train[0].positives == []  # the loaded task itself is not modified


def test_rank_classification_matches_direct_computation(p3_folder, tiny_main):
    tokenizer = ByT5Tokenizer()
    data = Data(source="embedded", demo_style="shots", num_positive=2, max_demo_length=128, max_input_length=64,
                max_target_length=8)
    collator = Collator(tokenizer, data)
    method = FinetuneMethod(tiny_main, few_shot=False, eval_cfg=Evaluation())
    task = load_p3(p3_folder, ["super_glue_rte"], "validation")[0]
    scores, records = evaluate_choices(method, [task], collator, "cpu", max_instances=6, batch_size=4,
                                       group_of=held_out_dataset, progress=False)
    correct = 0
    for example, record in zip(task.instances, records):
        direct = []
        for choice in example.choices:
            enc = tokenizer([example.input], return_tensors="pt")
            labels = tokenizer([choice], return_tensors="pt").input_ids
            with torch.no_grad():
                logits = tiny_main(**enc, labels=labels).logits
            direct.append(logits.log_softmax(-1)[0, torch.arange(labels.shape[1]), labels[0]].sum().item())
        expected = example.choices[max(range(len(direct)), key=direct.__getitem__)]
        assert record["prediction"] == expected
        correct += expected == example.outputs[0]
    assert scores["per_task"][task.name]["accuracy"] == pytest.approx(100 * correct / 6)
    assert scores["per_group"] == {"rte": pytest.approx(100 * correct / 6)}


def test_sequence_log_likelihood_ignores_padding():
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[2, 4, -100]])
    expected = logits.log_softmax(-1)[0, 0, 2] + logits.log_softmax(-1)[0, 1, 4]
    torch.testing.assert_close(sequence_log_likelihood(logits, labels)[0], expected)


def test_malformed_subsets_name_file_and_row(tmp_path):
    root = tmp_path / "p3"
    rows = rte_rows(3)
    del rows[1]["answer_choices"]
    write_subset(root, "super_glue_cb_x", "validation", rows)
    with pytest.raises(TaskFormatError, match=r"super_glue_cb_x/validation.jsonl: row 1: field 'answer_choices'"):
        load_p3(root, ["super_glue_cb"], "validation")
    rows = rte_rows(3)
    rows[2]["targets_pretokenized"] = "maybe"
    write_subset(root, "super_glue_cb_x", "validation", rows)
    with pytest.raises(TaskFormatError, match=r"validation.jsonl: row 2: target 'maybe' is not among"):
        load_p3(root, ["super_glue_cb"], "validation")


def test_train_and_rank_evaluate_through_the_cli(p3_folder, tmp_path):
    from click.testing import CliRunner

    from hypergen.cli import main

    recipe = {
        "main_model": {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                                "num_heads": 4}},
        "hypernetwork": {"decoder_layers": 1},
        "peft": {"name": "prefix", "length": 2},
        "data": {"source": "p3", "path": str(p3_folder), "num_positive": 4, "include_definition": False,
                 "demo_style": "shots", "max_demo_length": 128, "max_input_length": 48, "max_target_length": 8,
                 "eval_instances_per_task": 4},
        "training": {"steps": 3, "batch_size": 4, "micro_batch_size": 4, "optimizer": "adamw", "lr": 1e-3,
                     "log_every": 1},
    }
    path = tmp_path / "p3.json"
    path.write_text(json.dumps(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "run" / "eval" / "scores.json").read_text())
    assert set(scores["per_group"]) == {"rte"} and scores["overall"]["instances"] == 4
    assert 0 <= scores["overall"]["accuracy"] <= 100 and "rte" in result.output
