"""HyperTuning-PT's joint with a run: the text a pretrain recipe trains on, the sampler that cuts it into chunks and
the report of what was read. Training itself is :func:`hypergen.runs.train.train`'s, for every recipe kind; only the
sampler and the collator differ (:mod:`.chunks`). A hypernetwork recipe starts from a run's weights
(``hypernetwork.init_from``) through :func:`hypergen.runs.folder.init_hypernet_from`.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_json
from ..recipe import PretrainRecipe
from ..runs.tasks import training_and_validation
from .chunks import ChunkSampler
from .corpus import TaskText, load_corpus

REPORT_FILE = "pretrain_data.json"


def pretraining_text(recipe: PretrainRecipe):
    """The documents the pre-training draws from: ``pretrain.corpus``, else the training tasks of ``data`` (the
    training split less any validation tasks: never a test task's text)."""
    if recipe.pretrain.corpus is not None:
        return load_corpus(recipe.pretrain.corpus)
    train_tasks, _ = training_and_validation(recipe)
    return TaskText(train_tasks)


def make_chunk_sampler(recipe: PretrainRecipe, source, tokenizer, rank: int) -> ChunkSampler:
    """Each process draws its own texts (seed + rank), as the task sampler does."""
    return ChunkSampler(source, tokenizer, recipe.pretrain.chunk_lengths, recipe.training.seed + rank)


def write_report(run_dir: Path, sampler: ChunkSampler) -> str:
    """``RUN/pretrain_data.json`` (what rank 0's sampler read); returns a one-line summary of it."""
    report = sampler.report()
    atomic_write_json(Path(run_dir) / REPORT_FILE, report)
    return (f"pre-training read {report['texts_used']} windows of {sum(report['chunk_lengths'])} tokens from "
            f"{report['source']}; {report['texts_skipped_too_short']} of {report['texts_drawn']} texts drawn were "
            "too short and skipped")
