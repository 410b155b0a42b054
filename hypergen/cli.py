"""The ``hypergen`` command line: train, finetune, pretrain, sweep, eval, compare, adapt, predict, recipes, registry, plot."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import HypergenError

_DEBUG = {"on": False}


class HypergenGroup(click.Group):
    """Prints a HypergenError as one line and exits with status 2 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HypergenError as exc:
            if _DEBUG["on"]:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=HypergenGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
def main(debug: bool) -> None:
    """hypergen: train hypernetworks (HART, HyperTuning) that turn demonstrations into PEFT weights."""
    _DEBUG["on"] = debug



from .commands.options import _code_option, _set_option  # noqa: E402


def _training_command(function):
    """The arguments and options ``train`` and ``finetune`` share."""
    for decorator in reversed([
        click.argument("recipe", metavar="RECIPE"),
        _set_option,
        _code_option,
        click.option("--output", "-o", type=click.Path(file_okay=False),
                     help="Run folder (default: runs/<recipe name>)."),
        click.option("--resume", is_flag=True, help="Continue the run in --output from its last valid checkpoint."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run in --output."),
        click.option("--no-eval", is_flag=True, help="Skip the held-out evaluation after training."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        # the `deepspeed` launcher passes --local_rank=N unless given --no_local_rank; the rank is read from the
        # LOCAL_RANK variable it also sets, so the option is accepted and ignored
        click.option("--local_rank", "--local-rank", type=int, hidden=True, expose_value=False),
    ]):
        function = decorator(function)
    return main.command()(function)


@_training_command
def train(recipe, overrides, output, resume, overwrite, no_eval, quiet) -> None:
    """Train the hypernetwork RECIPE (a file, or a built-in recipe's name) describes and evaluate it on the
    held-out tasks."""
    from .recipe.builtin import resolve_recipe
    from .runs.train import train as run_train

    recipe = resolve_recipe(recipe)

    run_dir = run_train(recipe, output, list(overrides), resume, overwrite, not quiet, not no_eval)
    _print_final(run_dir, no_eval)


@_training_command
def finetune(recipe, overrides, output, resume, overwrite, no_eval, quiet) -> None:
    """Multi-task fine-tune a main model (FT-Zero-Shot / FT-Few-Shot); saves RUN/model as a Hugging Face folder."""
    from .recipe.builtin import resolve_recipe
    from .runs.train import train as run_train
    from .recipe import read_recipe_dict

    recipe = resolve_recipe(recipe)
    if read_recipe_dict(recipe).get("kind") != "finetune":
        raise HypergenError(f"{recipe}: kind: expected 'finetune' for `hypergen finetune` (use `hypergen train`)")
    run_dir = run_train(recipe, output, list(overrides), resume, overwrite, not quiet, not no_eval)
    click.echo(f"main model saved to {run_dir / 'model'}")
    _print_final(run_dir, no_eval)


@_training_command
def pretrain(recipe, overrides, output, resume, overwrite, no_eval, quiet) -> None:
    """Pre-train a hypernetwork on raw text (HyperTuning-PT; a "kind": "pretrain" recipe): each text cut into four
    chunks, the hypernetwork reads the first and the fourth, the frozen main model the second, predicting the third.
    Start a hypernetwork recipe from the run with --set hypernetwork.init_from=RUN."""
    from .recipe.builtin import resolve_recipe
    from .runs.train import train as run_train
    from .recipe import read_recipe_dict

    recipe = resolve_recipe(recipe)
    if read_recipe_dict(recipe).get("kind") != "pretrain":
        raise HypergenError(f"{recipe}: kind: expected 'pretrain' for `hypergen pretrain` (use `hypergen train`)")
    run_dir = run_train(recipe, output, list(overrides), resume, overwrite, not quiet, not no_eval)
    click.echo(f"hypernetwork saved to {run_dir / 'hypernetwork.safetensors'}")
    click.echo(f"run written to {run_dir}")


def _print_final(run_dir: Path, no_eval: bool) -> None:
    from .io import read_json
    from .runs.evaluate import format_scores

    scores = run_dir / "eval" / "scores.json"
    if not no_eval and scores.is_file():
        click.echo(format_scores(read_json(scores, "scores file")))
    click.echo(f"run written to {run_dir}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--grid", "grid", multiple=True, required=True, metavar="KEY.PATH=V1,V2,...",
              help="Values of a recipe field to sweep (parsed as JSON, like --set); repeat for a cartesian product.")
@_set_option
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Sweep folder: a run folder per grid point, sweep.md, sweep.json, test/ (default: runs/<recipe "
                   "name>-sweep).")
@click.option("--resume", is_flag=True, help="Continue a sweep: read back finished runs, resume interrupted ones.")
@click.option("--overwrite", is_flag=True, help="Retrain every grid point's run folder.")
@click.option("--no-eval", is_flag=True, help="Pick the best run but do not evaluate it on the test tasks.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_code_option
def sweep(recipe, grid, overrides, output, resume, overwrite, no_eval, quiet) -> None:
    """Train RECIPE (a file, or a built-in recipe's name) once per grid point, pick the best by validation ROUGE-L
    (P3: accuracy), test only that one."""
    from .recipe.builtin import resolve_recipe
    from .runs.sweep import format_table, plan_sweep, run_sweep

    recipe = resolve_recipe(recipe)

    plan = plan_sweep(recipe, list(grid), output or Path("runs") / f"{Path(recipe).stem}-sweep", list(overrides))
    result = run_sweep(plan, resume, overwrite, not quiet, not no_eval, log=lambda m: click.echo(m, err=True))
    click.echo(format_table(result), nl=False)
    click.echo(f"sweep written to {plan.output / 'sweep.md'}")


@main.command("eval")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="A trained run folder.")
@click.option("--recipe", help="With --frozen: a recipe (file or built-in name) whose main model alone is scored.")
@click.option("--frozen", metavar="MODE", help="Score the main model alone, no hypernetwork: zero_shot (the query), "
              "instruction (definition + query) or in_context (definition + 2 positive examples + query), into "
              "--output (default runs/frozen-<recipe>-<mode>, or beside the --run).")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="With --frozen: the folder written.")
@_set_option
@click.option("--data", type=click.Path(), help="Task folder to evaluate on (default: the recipe's).")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), help="File listing the test task names.")
@click.option("--max-instances", type=click.IntRange(min=1), help="Instances per task (default: the recipe's).")
@click.option("--control", help="A demos control, scored into RUN/eval-control-<name>/: 'other' (every task gets "
              "another held-out task's demos), 'random' (random tokens of the same length), 'none' (no demos). A "
              "method that adapts from the demos scores lower under each.")
@click.option("--other-demos", is_flag=True, help="The same as --control other.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_code_option
def eval_command(run_dir, recipe, frozen, output, overrides, data, split_file, max_instances, control, other_demos,
                 quiet) -> None:
    """Generate each task's parameters once from its demos, decode greedily, print and write ROUGE-L and EM; with
    --frozen, the same for the main model alone (hypergen eval --recipe RECIPE --frozen MODE)."""
    from .data.controls import control_dir
    from .runs.evaluate import check_control, evaluate_run, format_scores

    if (run_dir is None) == (recipe is None):
        raise HypergenError("--run, --recipe: give exactly one (a trained run, or with --frozen a recipe)")
    if frozen is not None or recipe is not None:
        _eval_frozen(run_dir, recipe, frozen, output, overrides, data, split_file, max_instances,
                     control or other_demos, quiet)
        return
    for name, value in (("--output", output), ("--set", overrides)):
        if value:
            raise HypergenError(f"{name}: only with --frozen (a run's scores go to RUN/eval/)")
    control = check_control(control, other_demos)
    if not Path(run_dir).is_dir():
        raise HypergenError(f"--run: {run_dir} does not exist")
    scores = evaluate_run(run_dir, data, split_file, max_instances, progress=not quiet, control=control)
    click.echo(format_scores(scores))
    click.echo(f"scores written to {Path(run_dir) / (control_dir(control) if control else 'eval') / 'scores.json'}")


def _eval_frozen(run_dir, recipe, mode, output, overrides, data, split_file, max_instances, control, quiet) -> None:
    """``hypergen eval --frozen MODE`` (with --recipe or --run): see :mod:`hypergen.evaluation.frozen`."""
    from .recipe.builtin import resolve_recipe
    from .evaluation.frozen import check_mode, default_output, evaluate_frozen
    from .runs.train import errors_name_the_recipe
    from .runs.evaluate import format_scores
    from .recipe import load_recipe
    from .runs.folder import read_run

    if mode is None:
        raise HypergenError("--frozen: required with --recipe (zero_shot, instruction or in_context)")
    check_mode(mode)
    if control:
        raise HypergenError("--control: scores a run's use of its demos; it does not apply to --frozen")
    if run_dir is not None:
        if overrides:
            raise HypergenError("--set: only with --recipe (a run's recipe is the one it was trained with)")
        if not Path(run_dir).is_dir():
            raise HypergenError(f"--run: {run_dir} does not exist")
        where, loaded, source = run_dir, read_run(Path(run_dir)), {"run": str(Path(run_dir).resolve())}
    else:
        where = resolve_recipe(recipe)
        loaded, source = load_recipe(where, list(overrides)), {"recipe": str(Path(where).resolve())}
    out = Path(output) if output else default_output(mode, where if run_dir is None else None, run_dir)
    with errors_name_the_recipe(where):
        scores = evaluate_frozen(loaded, mode, out, source, data, split_file, max_instances, progress=not quiet)
    click.echo(format_scores(scores))
    click.echo(f"scores written to {out / 'eval' / 'scores.json'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--label", "labels", multiple=True, help="A label per run, in order (default: folder names).")
def compare(runs, labels) -> None:
    """Print held-out EM and ROUGE-L (or rank-classification accuracy) of evaluated runs side by side."""
    from .io import read_json

    labels = list(labels) + [Path(r).name for r in runs[len(labels):]]
    overalls = []
    for run in runs:
        scores_file = Path(run) / "eval" / "scores.json"
        if not scores_file.is_file():
            raise HypergenError(f"{run}: no eval/scores.json; run `hypergen eval --run {run}` first")
        scores = read_json(scores_file, "scores file")
        if not isinstance(scores, dict) or not isinstance(scores.get("overall"), dict):
            raise HypergenError(f"{scores_file}: expected an object with 'overall' scores")
        overalls.append(scores["overall"])
    columns = [("accuracy", "accuracy")] if all("accuracy" in o for o in overalls) else \
        [("exact_match", "EM"), ("rougeL", "ROUGE-L")]
    click.echo(f"{'method':<30}" + "".join(f" {title:>9}" for _, title in columns))
    for label, overall in zip(labels, overalls):
        click.echo(f"{label:<30}" + "".join(f" {overall.get(key, float('nan')):>9.2f}" for key, _ in columns))


def _add_commands() -> None:
    from .commands import adapters, recipes, reproduce, tools

    for command in (adapters.adapt, adapters.predict, adapters.check_adapter, recipes.recipes,
                    recipes.registry_group, tools.bench, reproduce.reproduce, tools.plot_group):
        main.add_command(command)


_add_commands()


if __name__ == "__main__":
    main()
