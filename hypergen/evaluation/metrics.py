"""Super-NaturalInstructions metrics, on a 0-100 scale.

``exact_match`` uses S-NI's ``normalize_answer`` (lowercase, drop ASCII punctuation, collapse whitespace; S-NI
keeps articles, unlike SQuAD) and ``rouge_l`` is rouge-score's ROUGE-L F-measure with its default tokenizer and
the Porter stemmer, as in S-NI's ``compute_metrics.py``. Both take the max over the references. Note that the
rouge tokenizer keeps only ``[a-z0-9]`` runs, so an answer made only of punctuation (``"[]"``) scores 0 ROUGE-L.
"""

from __future__ import annotations

import string
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_PUNCTUATION = set(string.punctuation)


def _as_list(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference is needed")
    return refs


def normalize_answer(text: str) -> str:
    """S-NI's answer normalisation: lowercase, remove punctuation, collapse whitespace."""
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """100 if the normalised prediction equals any normalised reference, else 0."""
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(r) for r in _as_list(references)) else 0.0


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure in [0, 100], max over references; an empty prediction scores 0."""
    return 100.0 * max(_SCORER.score(r, prediction)["rougeL"].fmeasure for r in _as_list(references))


def score_predictions(records: Iterable[Mapping]) -> dict:
    """Mean exact match and ROUGE-L over instances, overall and per task.

    Each record has ``task``, ``prediction`` and ``references``. Returns
    ``{"overall": {"exact_match", "rougeL", "instances"}, "per_task": {task: {...}}}`` with tasks sorted by name.
    """
    per_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for index, record in enumerate(records):
        missing = [k for k in ("task", "prediction", "references") if k not in record]
        if missing:
            raise ValueError(f"prediction record {index} lacks field(s) {', '.join(missing)}")
        pred, refs = record["prediction"], record["references"]
        per_task[record["task"]].append((exact_match(pred, refs), rouge_l(pred, refs)))
    if not per_task:
        raise ValueError("no prediction records to score")

    def summary(scores: list[tuple[float, float]]) -> dict:
        n = len(scores)
        return {"exact_match": sum(s[0] for s in scores) / n, "rougeL": sum(s[1] for s in scores) / n, "instances": n}

    return {
        "overall": summary([s for scores in per_task.values() for s in scores]),
        "per_task": {task: summary(per_task[task]) for task in sorted(per_task)},
    }
