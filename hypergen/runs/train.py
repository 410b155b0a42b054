"""Train a recipe into a run folder: the one path every recipe kind takes (``hypergen train``, ``finetune``,
``pretrain``, ``sweep``).

Everything is validated (recipe, components, shapes, model, data) before the run folder is touched. What differs
between the kinds is only where the training examples come from and what happens after the last step, and that is
one object per kind (:class:`TaskRun`: hypernetwork and finetune recipes, tasks in and held-out evaluation out;
:class:`TextRun`: pretrain recipes, raw text in and a report of what was read out).
"""

from __future__ import annotations

import json
import random
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.sampling import TaskSampler
from ..data.tasks import Task
from ..errors import HypergenError
from ..evaluation.evaluate import evaluate
from ..models.main import check_model_available
from ..pretraining.text import make_chunk_sampler, pretraining_text, write_report
from ..recipe import HypernetRecipe, PretrainRecipe, Recipe, load_recipe, recipe_sections
from ..training.activation_recompute import enable_gradient_checkpointing
from ..training.compile import compile_blocks
from ..training.distributed import setup as setup_distributed, teardown as teardown_distributed
from ..training.loggers import Loggers
from ..training.optim import check_optimizer
from ..training.trainer import Trainer
from .assembly import Assembled, assemble
from .devices import resolve_device
from .evaluate import evaluate_assembled
from .folder import finished_run, init_hypernet_from, prepare_run_dir, save_final
from .tasks import load_tasks, training_and_validation


@dataclass
class TaskRun:
    """Hypernetwork and finetune recipes: training tasks sampled task by task (validation tasks never are), the
    held-out test tasks evaluated after training."""

    train: list[Task]
    validation: list[Task] = field(default_factory=list)
    test: list[Task] = field(default_factory=list)

    @classmethod
    def load(cls, recipe: Recipe) -> "TaskRun":
        train_tasks, validation_tasks = training_and_validation(recipe)  # validation: never sampled
        return cls(train_tasks, validation_tasks, load_tasks(recipe, "test"))

    def sampler(self, recipe: Recipe, assembled: Assembled, rank: int) -> TaskSampler:
        data = recipe.data
        return TaskSampler(self.train, recipe.training.seed + rank, data.queries_per_task, data.proportional_sampling,
                           shots=data.num_positive if data.source == "p3" else 0,
                           max_instances_per_task=data.max_train_instances_per_task)

    def finish(self, recipe: Recipe, run_dir: Path, assembled: Assembled, sampler, progress: bool,
               evaluate_after: bool) -> None:
        if evaluate_after:
            evaluate_assembled(assembled, self.test, run_dir, recipe.data.eval_instances_per_task, progress)


@dataclass
class TextRun:
    """Pretrain recipes: raw text cut into chunks; no task to validate or evaluate on, a report of the text read."""

    text: Any
    validation: list[Task] = field(default_factory=list)

    @classmethod
    def load(cls, recipe: PretrainRecipe) -> "TextRun":
        return cls(pretraining_text(recipe))

    def sampler(self, recipe: PretrainRecipe, assembled: Assembled, rank: int):
        return make_chunk_sampler(recipe, self.text, assembled.tokenizer, rank)

    def finish(self, recipe: PretrainRecipe, run_dir: Path, assembled: Assembled, sampler, progress: bool,
               evaluate_after: bool) -> None:
        print(write_report(run_dir, sampler))


def run_kind(recipe: Recipe) -> type[TaskRun] | type[TextRun]:
    """What a recipe of this kind trains on, and does after training."""
    return TextRun if isinstance(recipe, PretrainRecipe) else TaskRun


def train(recipe_path: str, output: str | None, overrides: list[str], resume: bool = False, overwrite: bool = False,
          progress: bool = True, evaluate_after: bool = True) -> Path:
    recipe = load_recipe(recipe_path, overrides)
    resolved = json.loads(recipe.model_dump_json())
    run_dir = Path(output or Path("runs") / Path(recipe_path).stem)
    final = finished_run(run_dir, resolved)  # also refuses a folder that is not a run, before loading anything
    if resume and not overwrite and final is not None:  # nothing to continue: say so, leave the run as it is
        print(f"{run_dir}: the run is finished ({final.relative_to(run_dir)} is written); nothing to resume")
        return run_dir
    # one process unless launched by torchrun/deepspeed (backend deepspeed: a process group of one)
    dist = setup_distributed(recipe.distributed, recipe_path)
    try:
        with ExitStack() as held:  # the run folder's lock, released when training ends (or by the OS on a crash)
            return _train(recipe, recipe_path, resolved, run_dir, resume, overwrite, progress, evaluate_after, dist,
                          held)
    finally:
        teardown_distributed(dist)


def _train(recipe, recipe_path: str, resolved: dict[str, Any], run_dir: Path, resume: bool, overwrite: bool,
           progress: bool, evaluate_after: bool, dist, held: ExitStack) -> Path:
    # everything is validated (recipe, components, shapes, model, data) before the run folder is touched
    with errors_name_the_recipe(recipe_path):
        check_optimizer(recipe.training)  # adam8bit without a usable bitsandbytes: fail now, not after loading
        if recipe.main_model.name_or_path:
            check_model_available(recipe.main_model.name_or_path)  # fail in seconds, before loading any data
        with dist.main_first():  # rank 0 writes any data cache (embedded tasks) before the others read it
            data = run_kind(recipe).load(recipe)
        random.seed(recipe.training.seed)
        torch.manual_seed(recipe.training.seed)
        device = resolve_device(recipe.training.device)
        if device.type == "cuda" and dist.active:
            device = torch.device("cuda", dist.local_rank)
        assembled = assemble(recipe, device)
        if isinstance(recipe, HypernetRecipe) and recipe.hypernetwork.init_from:  # before a resume's checkpoint
            init_hypernet_from(assembled.method.module, recipe.hypernetwork.init_from)
        switches = recipe.training.checkpointing
        enable_gradient_checkpointing(assembled.method, switches.hypernetwork, switches.main_model)
        Loggers(recipe.training.loggers)  # an unknown logger or a missing package fails before the run folder
        if recipe.training.compile:
            compile_blocks(assembled.method)
    with dist.main_first():
        if dist.is_main:  # rank 0 alone writes the folder, so it alone holds the lock
            held.enter_context(prepare_run_dir(run_dir, resolved, resume, overwrite))
    # each process samples its own examples: seed + rank (rank 0 draws what a single process draws)
    sampler = data.sampler(recipe, assembled, dist.rank)
    cfg = recipe.training

    def periodic_eval() -> dict[str, Any]:
        """The first ``eval_tasks`` validation tasks (never test tasks); the record names the split."""
        scores, _ = evaluate(assembled.method, data.validation[: cfg.eval_tasks], assembled.collator,
                             assembled.device, cfg.eval_instances, recipe.evaluation.batch_size, progress=False)
        return {"overall": {"split": "validation", **scores["overall"]}}

    trainer = Trainer(assembled.method, sampler, assembled.collator, cfg, run_dir, assembled.device,
                      evaluate_fn=periodic_eval, progress=progress, dist=dist, precision=cfg.precision,
                      distributed=recipe.distributed)
    if resume and trainer.resume() and dist.is_main:
        print(f"resumed {run_dir} at step {trainer.step}")
    trainer.fit()
    if not dist.is_main:  # rank 0 writes the final weights and evaluates, in one process; the others wait for it
        dist.barrier()  # (so that the CLI, which prints eval/scores.json after training, finds it in every process)
        return run_dir
    try:
        save_final(run_dir, assembled)
        data.finish(recipe, run_dir, assembled, sampler, progress, evaluate_after)
    finally:
        dist.barrier()
    return run_dir


@contextmanager
def errors_name_the_recipe(recipe_path: str):
    """Prefix the recipe file to errors that name one of its fields (``peft.length: ...``), so that every message
    names the file, the field and what was expected. Errors about other files (task files) already name them."""
    try:
        yield
    except HypergenError as exc:
        message = str(exc)
        head = message.split(":", 1)[0].split(".", 1)[0].split(",", 1)[0].strip()
        if head in recipe_sections():  # read from the recipe models: every kind's top-level keys
            raise type(exc)(f"{recipe_path}: {message}") from None
        raise
