"""Tests for hypergen.evaluation.metrics (S-NI exact match and ROUGE-L)."""

import pytest
from rouge_score import rouge_scorer

from hypergen.evaluation.metrics import exact_match, normalize_answer, rouge_l, score_predictions


def test_rouge_l():
    assert rouge_l("the cat sat", ["the cat sat"]) == pytest.approx(100)
    assert rouge_l("dog", ["cat"]) == 0
    assert rouge_l("", ["cat"]) == 0
    pred, ref = "the cats sat on a mat", "the cat sat on the red mat"
    direct = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    assert direct == pytest.approx(2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7))  # LCS "the cat sat on mat", stemmed
    assert rouge_l(pred, [ref]) == pytest.approx(100 * direct)
    assert rouge_l(pred, ["zzz", ref, "mat"]) == pytest.approx(100 * direct)


def test_exact_match():
    assert normalize_answer("  The  Cat, sat!\n") == "the cat sat"
    assert exact_match("The cat sat.", ["a dog", "the  CAT sat"]) == 100
    assert exact_match("cat", ["dog"]) == 0
    assert exact_match("[1, 2]", "1 2") == 100


def test_score_predictions():
    records = [
        {"task": "a", "prediction": "x", "references": ["x"]},
        {"task": "a", "prediction": "y", "references": ["x"]},
        {"task": "b", "prediction": "z w", "references": ["z w"]},
    ]
    scores = score_predictions(records)
    assert scores["per_task"]["a"] == {"exact_match": 50, "rougeL": 50, "instances": 2}
    assert scores["per_task"]["b"]["exact_match"] == 100
    assert scores["overall"]["instances"] == 3
    assert scores["overall"]["exact_match"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="references"):
        score_predictions([{"task": "a", "prediction": "x"}])
