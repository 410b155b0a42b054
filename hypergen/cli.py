"""The ``hypergen`` command line: train, finetune, eval, compare, recipes, registry."""

from __future__ import annotations

import json
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


_set_option = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                           help="Override a recipe field (value parsed as JSON), repeatable.")


def _training_command(function):
    """The arguments and options ``train`` and ``finetune`` share."""
    for decorator in reversed([
        click.argument("recipe", type=click.Path(dir_okay=False)),
        _set_option,
        click.option("--output", "-o", type=click.Path(file_okay=False),
                     help="Run folder (default: runs/<recipe name>)."),
        click.option("--resume", is_flag=True, help="Continue the run in --output from its last valid checkpoint."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run in --output."),
        click.option("--no-eval", is_flag=True, help="Skip the held-out evaluation after training."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]):
        function = decorator(function)
    return main.command()(function)


@_training_command
def train(recipe, overrides, output, resume, overwrite, no_eval, quiet) -> None:
    """Train the hypernetwork RECIPE describes and evaluate it on the held-out tasks."""
    from .pipeline import train as run_train

    run_dir = run_train(recipe, output, list(overrides), resume, overwrite, not quiet, not no_eval)
    _print_final(run_dir, no_eval)


@_training_command
def finetune(recipe, overrides, output, resume, overwrite, no_eval, quiet) -> None:
    """Multi-task fine-tune a main model (FT-Zero-Shot / FT-Few-Shot); saves RUN/model as a Hugging Face folder."""
    from .pipeline import train as run_train
    from .recipe import read_recipe_dict

    if read_recipe_dict(recipe).get("kind") != "finetune":
        raise HypergenError(f"{recipe}: kind: expected 'finetune' for `hypergen finetune` (use `hypergen train`)")
    run_dir = run_train(recipe, output, list(overrides), resume, overwrite, not quiet, not no_eval)
    click.echo(f"main model saved to {run_dir / 'model'}")
    _print_final(run_dir, no_eval)


def _print_final(run_dir: Path, no_eval: bool) -> None:
    from .pipeline import format_scores

    if not no_eval:
        click.echo(format_scores(json.loads((run_dir / "eval" / "scores.json").read_text())))
    click.echo(f"run written to {run_dir}")


@main.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="A trained run folder.")
@click.option("--data", type=click.Path(), help="Task folder to evaluate on (default: the recipe's).")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), help="File listing the test task names.")
@click.option("--max-instances", type=click.IntRange(min=1), help="Instances per task (default: the recipe's).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_command(run_dir, data, split_file, max_instances, quiet) -> None:
    """Generate each task's parameters once from its demos, decode greedily, print and write ROUGE-L and EM."""
    from .pipeline import evaluate_run, format_scores

    if not Path(run_dir).is_dir():
        raise HypergenError(f"--run: {run_dir} does not exist")
    scores = evaluate_run(run_dir, data, split_file, max_instances, progress=not quiet)
    click.echo(format_scores(scores))
    click.echo(f"scores written to {Path(run_dir) / 'eval' / 'scores.json'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--label", "labels", multiple=True, help="A label per run, in order (default: folder names).")
def compare(runs, labels) -> None:
    """Print held-out EM and ROUGE-L of several evaluated runs side by side."""
    labels = list(labels) + [Path(r).name for r in runs[len(labels):]]
    click.echo(f"{'method':<28} {'EM':>7} {'ROUGE-L':>8}")
    for label, run in zip(labels, runs):
        scores_file = Path(run) / "eval" / "scores.json"
        if not scores_file.is_file():
            raise HypergenError(f"{run}: no eval/scores.json; run `hypergen eval --run {run}` first")
        overall = json.loads(scores_file.read_text())["overall"]
        click.echo(f"{label:<28} {overall['exact_match']:>7.2f} {overall['rougeL']:>8.2f}")


@main.group()
def recipes() -> None:
    """Validate recipes and print their JSON schema."""


@recipes.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_set_option
def recipes_validate(files, overrides) -> None:
    """Check FILES against the recipe schema and the registries (component names and parameters)."""
    from .components.build import make_component
    from .recipe import HypernetRecipe, load_recipe

    for file in files:
        recipe = load_recipe(file, list(overrides))
        if isinstance(recipe, HypernetRecipe):
            make_component("peft_targets", recipe.peft, f"{file}: peft")
            make_component("generators", recipe.hypernetwork.generator, f"{file}: hypernetwork.generator")
            make_component("projectors", recipe.hypernetwork.projector, f"{file}: hypernetwork.projector")
            for i, spec in enumerate(recipe.hypernetwork.regularizers):
                make_component("regularizers", spec, f"{file}: hypernetwork.regularizers.{i}")
        click.echo(f"{file}: ok ({recipe.kind})")


@recipes.command("schema")
def recipes_schema() -> None:
    """Print the JSON schema of hypernetwork and finetune recipes."""
    from .recipe import recipe_schema

    click.echo(json.dumps(recipe_schema(), indent=2))


@main.group("registry")
def registry_group() -> None:
    """Inspect the component registries."""


@registry_group.command("list")
def registry_list() -> None:
    """List every registered component (built-in or from a plugin) with its registry."""
    from .registry import KINDS, registry

    for kind in KINDS:
        for name, factory in registry.entries(kind).items():
            origin = getattr(factory, "__module__", "?")
            click.echo(f"{kind:<14} {name:<28} {origin}")


if __name__ == "__main__":
    main()
