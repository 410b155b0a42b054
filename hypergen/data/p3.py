"""P3 (Public Pool of Prompts): T0's training subsets and held-out tasks, from a local folder or the hub.

A local folder holds one sub-folder per P3 subset (a dataset with one prompt template, e.g.
``super_glue_rte_GPT_3_style``) with one file per split: ``train``/``validation``/``test`` as ``.jsonl``,
``.parquet`` or ``.arrow``, with the fields ``inputs_pretokenized``, ``targets_pretokenized`` and, for
multiple-choice subsets, ``answer_choices``. ``data.path = "bigscience/P3"`` reads the hub dataset instead, where
the network allows.

Each subset is a task. Training (the paper, after HyperTuning): T0's training datasets, keeping subsets whose
average input is under 320 tokens; each draw's demos are 16 other examples of the subset ("16-Shots"). Evaluation:
the held-out T0 datasets (ANLI, HellaSwag, CB, COPA, RTE, WiC, WSC, Winogrande) on their validation split, by rank
classification, with one fixed set of 16 demos per subset taken from its training split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..errors import HypergenError, TaskFormatError
from .tasks import Example, Task

HUB_ID = "bigscience/P3"
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}

# T0's training mixture (Sanh et al., 2022), as P3 subset-name prefixes.
T0_TRAIN_DATASETS = (
    "commonsense_qa", "dream", "quail", "quartz", "social_i_qa", "wiqa", "cosmos_qa", "qasc", "quarel", "sciq",
    "wiki_hop", "adversarial_qa", "quoref", "ropes", "duorc", "kilt_tasks_hotpotqa", "wiki_qa", "common_gen",
    "wiki_bio", "amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full", "cnn_dailymail",
    "gigaword", "multi_news", "samsum", "xsum", "ag_news", "dbpedia_14", "trec", "glue_mrpc", "glue_qqp", "paws",
)
# The held-out T0 tasks (StoryCloze excluded: not publicly distributed), name -> subset-name prefix.
T0_HELD_OUT = {
    "anli": "anli", "hellaswag": "hellaswag", "cb": "super_glue_cb", "copa": "super_glue_copa",
    "rte": "super_glue_rte", "wic": "super_glue_wic", "wsc": "super_glue_wsc.fixed", "winogrande": "winogrande",
}


def dataset_of(subset: str, prefixes: Iterable[str]) -> str | None:
    """The longest prefix in ``prefixes`` that ``subset`` starts with (followed by ``_``), or None."""
    matches = [p for p in prefixes if subset == p or subset.startswith(p + "_")]
    return max(matches, key=len) if matches else None


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in FORMATS:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def _rows(path: Path) -> list[dict]:
    import datasets

    try:
        data = datasets.load_dataset(FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - any reader error is a format problem of this file
        raise TaskFormatError(f"{path}: cannot be read as {FORMATS[path.suffix]}: {exc}") from None
    return list(data)


def examples_from_rows(rows: list[dict], where: str, need_choices: bool) -> list[Example]:
    """P3 rows -> Examples; ``where`` names the file in errors (which also name the row)."""
    examples = []
    for i, row in enumerate(rows):
        for field in ("inputs_pretokenized", "targets_pretokenized"):
            if not isinstance(row.get(field), str):
                raise TaskFormatError(f"{where}: row {i}: field '{field}' is missing or not text")
        target = row["targets_pretokenized"].strip()
        choices = row.get("answer_choices")
        if need_choices or choices is not None:
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                raise TaskFormatError(f"{where}: row {i}: field 'answer_choices' is missing or not a list of "
                                      "strings; rank classification needs it")
            choices = tuple(c.strip() for c in choices)
            if target not in choices:
                raise TaskFormatError(f"{where}: row {i}: target {target!r} is not among answer_choices {choices}")
        examples.append(Example(row["inputs_pretokenized"].strip(), (target,), tuple(choices or ())))
    return examples


def list_subsets(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def load_p3(root: str | Path, datasets: Iterable[str], split: str, shots: int = 16,
            max_avg_input_tokens: float | None = None, count_tokens: Callable[[str], int] | None = None,
            max_instances: int | None = None) -> list[Task]:
    """The P3 subsets of ``datasets`` (name prefixes) under ``root``, as tasks of ``split``'s examples.

    ``split="train"``: training tasks, filtered to an average input under ``max_avg_input_tokens`` (counted with
    ``count_tokens``); their demos are drawn per iteration by the sampler. Other splits: evaluation tasks whose
    examples need ``answer_choices``, each with ``shots`` fixed demos from the subset's training split (or, where
    it has none, the first ``shots`` examples of ``split``, which are then not evaluated).
    """
    if str(root) == HUB_ID:
        return _load_hub(datasets, split, shots, max_instances)
    root = Path(root)
    if not root.is_dir():
        raise HypergenError(f"data.path: P3 folder {root} does not exist")
    prefixes = list(datasets)
    tasks = []
    for subset in list_subsets(root):
        if dataset_of(subset, prefixes) is None:
            continue
        path = _split_file(root / subset, split)
        if path is None:
            continue
        examples = examples_from_rows(_rows(path), str(path), need_choices=split != "train")
        if not examples:
            continue
        if split == "train":
            if max_avg_input_tokens and count_tokens:
                sample = examples[:1000]
                if sum(count_tokens(e.input) for e in sample) / len(sample) >= max_avg_input_tokens:
                    continue
            tasks.append(Task(subset, "", [], examples, str(path)))
            continue
        train_path = _split_file(root / subset, "train")
        if train_path is not None:
            demos = examples_from_rows(_rows(train_path), str(train_path), need_choices=False)[:shots]
        else:
            demos, examples = examples[:shots], examples[shots:]
        tasks.append(Task(subset, "", demos, examples[:max_instances] if max_instances else examples, str(path)))
    if not tasks:
        raise HypergenError(f"data.path: no P3 subsets of {', '.join(prefixes)} with a {split!r} split in {root}")
    return tasks


def _load_hub(datasets_: Iterable[str], split: str, shots: int, max_instances: int | None) -> list[Task]:
    from ..pretrained.hub import hub_reachable

    if not hub_reachable():
        raise HypergenError(f"data.path: cannot reach the Hugging Face Hub for {HUB_ID}; download its subsets "
                            "(parquet, arrow or jsonl per split) into a folder and set data.path to it")
    import datasets

    prefixes = list(datasets_)
    tasks = []
    for subset in datasets.get_dataset_config_names(HUB_ID):
        if dataset_of(subset, prefixes) is None:
            continue
        rows = list(datasets.load_dataset(HUB_ID, subset, split=split))
        examples = examples_from_rows(rows, f"{HUB_ID}/{subset}/{split}", need_choices=split != "train")
        demos = [] if split == "train" else examples_from_rows(
            list(datasets.load_dataset(HUB_ID, subset, split="train"))[:shots], f"{HUB_ID}/{subset}/train", False)
        tasks.append(Task(subset, "", demos, examples[:max_instances] if max_instances else examples, HUB_ID))
    return tasks


def held_out_dataset(subset: str) -> str:
    """The held-out T0 task a subset belongs to (``rte`` for ``super_glue_rte_GPT_3_style``), else the subset."""
    prefix = dataset_of(subset, T0_HELD_OUT.values())
    return next((name for name, p in T0_HELD_OUT.items() if p == prefix), subset)
