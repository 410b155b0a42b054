"""HyperTuning-PT's two joints with a run: the text a pretrain recipe trains on, and a hypernetwork recipe that
starts from a run's weights (``hypernetwork.init_from``). Training itself is :func:`hypergen.pipeline.train`'s, for
every recipe kind; only the sampler and the collator differ (:mod:`hypergen.data.pretraining`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data.corpus import TaskText, load_corpus
from .data.pretraining import ChunkSampler
from .errors import HypergenError
from .io import atomic_write_json, check_tensors_fit, read_safetensors
from .recipe import PretrainRecipe
from .runs import RUN_FOLDER, training_and_validation
from .training.checkpoint import list_checkpoints, verify

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


def run_hypernet_weights(run: str | Path, where: str = "hypernetwork.init_from") -> tuple[Path, dict]:
    """(the file, the weights) of a run's hypernetwork: its final ``hypernetwork.safetensors``, else its latest
    checkpoint that verifies. One line naming ``where`` when ``run`` is not a hypergen run or holds neither."""
    folder = Path(run).expanduser()
    if not folder.is_dir():
        raise HypergenError(f"{where}: {folder} does not exist")
    if not RUN_FOLDER.recognises(folder):
        raise HypergenError(f"{where}: {folder} is not a hypergen run folder (no {RUN_FOLDER.marker})")
    final = folder / "hypernetwork.safetensors"
    if final.is_file():
        return final, read_safetensors(final, "final hypernetwork weights")
    if (folder / "model").is_dir():
        raise HypergenError(f"{where}: {folder} is a finetune run (a main model, no hypernetwork)")
    for checkpoint in reversed(list_checkpoints(folder)):
        if verify(checkpoint) is None:
            weights = checkpoint / "model.safetensors"
            return weights, read_safetensors(weights, "checkpoint weights")
    raise HypergenError(f"{where}: {folder} holds no hypernetwork weights yet (no hypernetwork.safetensors, no "
                        "valid checkpoint)")


def init_hypernet_from(module: torch.nn.Module, run: str | Path) -> Path:
    """Load ``run``'s hypernetwork weights into ``module`` (names and shapes must match, else one line naming the
    first parameter that does not); returns the file read."""
    path, state = run_hypernet_weights(run)
    try:
        check_tensors_fit(path, module.state_dict(), state)
    except HypergenError as exc:
        raise HypergenError(f"hypernetwork.init_from: {exc}") from None
    module.load_state_dict(state)
    return path
