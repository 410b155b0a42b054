"""The two jobs behind the CLI: train a recipe into a run folder, and evaluate a run on held-out tasks."""

from __future__ import annotations

import json
import random
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from .data.collate import Collator
from .data.controls import CONTROLS, DemoControl, control_dir
from .data.sampling import TaskSampler
from .data.tasks import with_demos_of_other_tasks
from .errors import HypergenError
from .evaluation.evaluate import evaluate
from .models.main import check_model_available
from .pretraining import init_hypernet_from, make_chunk_sampler, pretraining_text, write_report
from .io import atomic_write_json, atomic_write_text
from .recipe import HypernetRecipe, PretrainRecipe, load_recipe
from .runs import (assemble, finished_run, load_final, load_tasks, prepare_run_dir, read_run, resolve_device,
                   save_final, training_and_validation)
from .training.activation_recompute import enable_gradient_checkpointing
from .training.loggers import Loggers
from .training.compile import compile_blocks
from .training.distributed import setup as setup_distributed, teardown as teardown_distributed
from .training.optim import check_optimizer
from .training.trainer import Trainer


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
        pretrain = isinstance(recipe, PretrainRecipe)  # raw text, not tasks; no evaluation
        with dist.main_first():  # rank 0 writes any data cache (embedded tasks) before the others read it
            if pretrain:
                text, validation_tasks, test_tasks = pretraining_text(recipe), [], []
            else:
                train_tasks, validation_tasks = training_and_validation(recipe)  # validation: never sampled
                test_tasks = load_tasks(recipe, "test")
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
    # each process samples its own tasks: seed + rank (rank 0 draws what a single process draws)
    if pretrain:
        sampler = make_chunk_sampler(recipe, text, assembled.tokenizer, dist.rank)
    else:
        sampler = TaskSampler(train_tasks, recipe.training.seed + dist.rank, recipe.data.queries_per_task,
                              recipe.data.proportional_sampling,
                              shots=recipe.data.num_positive if recipe.data.source == "p3" else 0,
                              max_instances_per_task=recipe.data.max_train_instances_per_task)
    cfg = recipe.training

    def periodic_eval() -> dict[str, Any]:
        """The first ``eval_tasks`` validation tasks (never test tasks); the record names the split."""
        scores, _ = evaluate(assembled.method, validation_tasks[: cfg.eval_tasks], assembled.collator,
                             assembled.device, cfg.eval_instances, recipe.evaluation.batch_size, progress=False)
        return {"overall": {"split": "validation", **scores["overall"]}}

    precision = recipe.training.precision  # the recipe validator made distributed.precision agree
    trainer = Trainer(assembled.method, sampler, assembled.collator, cfg, run_dir, assembled.device,
                      evaluate_fn=periodic_eval, progress=progress, dist=dist, precision=precision,
                      distributed=recipe.distributed)
    if resume and trainer.resume() and dist.is_main:
        print(f"resumed {run_dir} at step {trainer.step}")
    trainer.fit()
    if not dist.is_main:  # rank 0 writes the final weights and evaluates, in one process; the others wait for it
        dist.barrier()  # (so that the CLI, which prints eval/scores.json after training, finds it in every process)
        return run_dir
    try:
        save_final(run_dir, assembled)
        if pretrain:
            print(write_report(run_dir, sampler))
        elif evaluate_after:
            evaluate_assembled(assembled, test_tasks, run_dir, recipe.data.eval_instances_per_task, progress)
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
        if head in _RECIPE_FIELDS:
            raise type(exc)(f"{recipe_path}: {message}") from None
        raise


_RECIPE_FIELDS = {"kind", "main_model", "hypernetwork", "peft", "data", "training", "evaluation", "few_shot",
                  "train_demos_fraction", "distributed", "pretrain"}


def evaluate_assembled(assembled, tasks, run_dir: Path, max_instances: int, progress: bool = True,
                       out_name: str = "eval") -> dict[str, Any]:
    scores, records = evaluate(assembled.method, tasks, assembled.collator, assembled.device, max_instances,
                               assembled.recipe.evaluation.batch_size, progress=progress)
    out = Path(run_dir) / out_name
    atomic_write_json(out / "scores.json", scores)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return scores


def evaluate_run(run_dir: str, data: str | None = None, split_file: str | None = None,
                 max_instances: int | None = None, progress: bool = True, other_demos: bool = False,
                 device: torch.device | None = None, split: str = "test", control: str | None = None) -> dict[str, Any]:
    """Evaluate a trained run on its held-out test tasks into ``RUN/eval/``, or (``split="validation"``) on its
    validation tasks into ``RUN/validation/``; under a demos ``control`` (:mod:`.data.controls`: "other", "random",
    "none"; ``other_demos`` is "other") every test task's demos are replaced, into ``RUN/eval-control-<name>/``."""
    run = Path(run_dir)
    control = check_control(control, other_demos)
    if control and split != "test":
        raise HypergenError("--control: the demos controls evaluate the test tasks only")
    recipe = read_run(run)
    tasks = load_tasks(recipe, split, data_path=data, split_file=split_file)
    if control == "other":
        if recipe.data.source == "p3":
            raise HypergenError("--control other: not available for P3 runs (their held-out demos are drawn per "
                                "subset)")
        if len(tasks) < 2:
            raise HypergenError(f"--control other: needs at least two held-out tasks, {run} has {len(tasks)}")
        tasks = with_demos_of_other_tasks(tasks)
    assembled = load_final(run, device)
    if control in ("random", "none"):
        assembled.collator = Collator(assembled.tokenizer, recipe.data, causal=assembled.collator.causal,
                                      control=DemoControl(control, assembled.tokenizer))
    return evaluate_assembled(assembled, tasks, run, max_instances or recipe.data.eval_instances_per_task, progress,
                              out_name=control_dir(control) if control else SPLIT_DIRS[split])


def check_control(control: str | None, other_demos: bool = False) -> str | None:
    """The control ``hypergen eval`` runs: ``control`` ("other", "random", "none" or None), ``other_demos`` being
    an alias of "other"; anything else is a one-line error."""
    if control is not None and control not in CONTROLS:
        raise HypergenError(f"--control: {control!r} is not a demos control; expected one of {', '.join(CONTROLS)}")
    if other_demos and control not in (None, "other"):
        raise HypergenError(f"--other-demos is --control other; it cannot be combined with --control {control}")
    return "other" if other_demos else control


SPLIT_DIRS = {"test": "eval", "validation": "validation"}  # where evaluate_run writes each split's scores


def format_scores(scores: dict[str, Any], per_task: bool = True) -> str:
    if "accuracy" in scores["overall"]:  # rank classification (P3)
        lines = [f"{'task':<48} {'accuracy':>9}"]
        lines += [f"{name:<48} {value:>9.2f}" for name, value in scores["per_group"].items()] if per_task else []
        lines.append(f"{'overall (mean over tasks)':<48} {scores['overall']['accuracy']:>9.2f}")
        return "\n".join(lines)
    lines = []
    if per_task:
        lines.append(f"{'task':<48} {'EM':>7} {'ROUGE-L':>8} {'n':>5}")
        for task, s in scores["per_task"].items():
            lines.append(f"{task:<48} {s['exact_match']:>7.2f} {s['rougeL']:>8.2f} {s['instances']:>5}")
    o = scores["overall"]
    lines.append(f"{'overall':<48} {o['exact_match']:>7.2f} {o['rougeL']:>8.2f} {o['instances']:>5}")
    return "\n".join(lines)
