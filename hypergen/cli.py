"""The ``hypergen`` command line: train, finetune, eval, compare, adapt, predict, recipes, registry, plot."""

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


def _import_code(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from .user_code import import_code_file

        import_code_file(value)


_code_option = click.option("--code", type=click.Path(dir_okay=False), callback=_import_code, expose_value=False,
                            metavar="FILE.py", help="A Python file to import first: it registers components "
                            "(with hypergen's registry decorators) that the recipe may name.")


def _training_command(function):
    """The arguments and options ``train`` and ``finetune`` share."""
    for decorator in reversed([
        click.argument("recipe", type=click.Path(dir_okay=False)),
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
    from .io import read_json
    from .pipeline import format_scores

    scores = run_dir / "eval" / "scores.json"
    if not no_eval and scores.is_file():
        click.echo(format_scores(read_json(scores, "scores file")))
    click.echo(f"run written to {run_dir}")


@main.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="A trained run folder.")
@click.option("--data", type=click.Path(), help="Task folder to evaluate on (default: the recipe's).")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), help="File listing the test task names.")
@click.option("--max-instances", type=click.IntRange(min=1), help="Instances per task (default: the recipe's).")
@click.option("--other-demos", is_flag=True,
              help="The demos control: give every task another held-out task's demos (written to "
                   "RUN/eval-other-demos/). A method that adapts from the demos scores lower.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_command(run_dir, data, split_file, max_instances, other_demos, quiet) -> None:
    """Generate each task's parameters once from its demos, decode greedily, print and write ROUGE-L and EM."""
    from .pipeline import OTHER_DEMOS_DIR, evaluate_run, format_scores

    if not Path(run_dir).is_dir():
        raise HypergenError(f"--run: {run_dir} does not exist")
    scores = evaluate_run(run_dir, data, split_file, max_instances, progress=not quiet, other_demos=other_demos)
    click.echo(format_scores(scores))
    click.echo(f"scores written to {Path(run_dir) / (OTHER_DEMOS_DIR if other_demos else 'eval') / 'scores.json'}")


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


def _quiet_hub() -> None:
    """No transformers progress bars (loading/writing weights)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="A trained hypernetwork run.")
@click.option("--task", "task_file", type=click.Path(dir_okay=False), help="An S-NI task file whose demos to use.")
@click.option("--demos", "demos_file", type=click.Path(dir_okay=False),
              help='JSONL: at most one {"definition": ...} line and {"input": ..., "output": ...} pairs.')
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The adapter folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def adapt(run_dir, task_file, demos_file, out, overwrite, quiet) -> None:
    """Generate one task's PEFT parameters (one hypernetwork pass) and write them as an adapter folder.

    The run's PEFT target writes its own format: LoRA runs give a peft LoRA folder (adapter_config.json +
    adapter_model.safetensors); prefix runs give hypergen's prefix folder. A tiny main model is saved into OUT/base_model so `hypergen predict` can reload it.
    """
    from .adapters import ADAPTER_FOLDER, export_adapter
    from .data.jsonl import read_demos_file
    from .data.tasks import load_task
    from .folders import prepare_output_dir
    from .runs import load_final, read_run
    from .recipe import FinetuneRecipe

    if (task_file is None) == (demos_file is None):
        raise HypergenError("adapt: give exactly one of --task TASK.json and --demos FILE.jsonl")
    task = load_task(task_file) if task_file else read_demos_file(demos_file)
    run = Path(run_dir)
    if not run.is_dir():
        raise HypergenError(f"--run: {run} does not exist")
    recipe = read_run(run)
    weights = run / "hypernetwork.safetensors"
    if isinstance(recipe, FinetuneRecipe) or not weights.is_file():
        raise HypergenError(f"{weights}: not found; --run must name a trained hypernetwork run")
    out_path = prepare_output_dir(Path(out), ADAPTER_FOLDER, overwrite, "--out")  # before loading anything
    if quiet:
        _quiet_hub()
    assembled = load_final(run)
    export_adapter(assembled, task, out_path, run_dir=run, overwrite=overwrite)
    click.echo(f"adapter ({recipe.peft.name}) for {task.name} written to {out_path}")


@main.command()
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(file_okay=False),
              help="An adapter folder written by `hypergen adapt` (or a peft LoRA folder of a T5).")
@click.option("--input", "input_file", required=True, type=click.Path(dir_okay=False),
              help='JSONL queries, {"input": ...} per line.')
@click.option("--output", "output_file", type=click.Path(dir_okay=False), help="JSONL predictions (default: stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Default: the run's evaluation setting.")
@click.option("--base-model", help="Main model to use instead of the adapter's base_model_name_or_path.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(adapter_dir, input_file, output_file, batch_size, max_new_tokens, base_model, quiet) -> None:
    """Run the adapter's main model with the adapter on every query; write {"input", "prediction"} lines."""
    from .adapters import base_model_of, load_adapter, read_adapter_config
    from .data.jsonl import read_queries
    from .evaluation.predict import predict as run_predict, write_predictions
    from .models.main import load_main_model
    from .recipe import MainModel
    from .runs import resolve_device

    _, _, settings = read_adapter_config(adapter_dir)
    queries = read_queries(input_file)
    if quiet:
        _quiet_hub()
    name = base_model or base_model_of(adapter_dir)
    model, tokenizer = load_main_model(MainModel(name_or_path=name, dtype=settings.get("dtype", "float32")),
                                       resolve_device("auto"))
    adapter = load_adapter(adapter_dir, model)
    predictions = run_predict(adapter, model, tokenizer, queries, batch_size, max_new_tokens,
                              progress=not quiet)
    text = write_predictions(output_file, queries, predictions)
    if output_file is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"{len(predictions)} predictions written to {output_file}", err=True)


@main.group()
def recipes() -> None:
    """Validate recipes and print their JSON schema."""


@recipes.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_set_option
@_code_option
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
@_code_option
def registry_list() -> None:
    """List every registered component (built-in, from a plugin or from --code) with its registry."""
    from . import components  # noqa: F401 - registers the built-ins
    from .registry import KINDS, registry

    for kind in KINDS:
        for name, factory in registry.entries(kind).items():
            origin = getattr(factory, "__module__", "?")
            click.echo(f"{kind:<14} {name:<28} {origin}")


@main.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False),
              help="A trained hypernetwork run: its main model, tokenizer, hypernetwork and held-out tasks.")
@click.option("--size", type=click.Choice(["tiny", "t5-large"]), default=None,
              help="Without --run: random-weight main model of this size (default: tiny).")
@click.option("--tasks", "num_tasks", type=click.IntRange(min=1), default=8, show_default=True,
              help="Held-out tasks to time adaptation on.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Fine-tuning steps S per task.")
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Folder for bench.json, bench.png, bench.txt (default: runs/bench/<size or run name>).")
@click.option("--depths", default="6,12,24,48", show_default=True,
              help="Main-model depths for the autoregressive generator's scaling.")
@click.option("--eval-every", type=click.IntRange(min=1), default=5, show_default=True,
              help="With --run: evaluate the fine-tuned model every this many steps.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default: torch's; 1 is steadier "
              "on a machine other processes share).")
def bench(run_dir, size, num_tasks, steps, output, depths, eval_every, device, threads) -> None:
    """Time hypernetwork adaptation (the run's, by its registered names; HART; HyperTuning) against LoRA and prefix
    fine-tuning; print, write JSON+PNG."""
    from .bench import BenchConfig, format_table, run_bench, write_outputs

    if run_dir is not None and size is not None:
        raise HypergenError("bench: give --run or --size, not both (a run fixes the size)")
    try:
        depth_list = tuple(sorted({int(d) for d in depths.split(",") if d.strip()}))
    except ValueError:
        raise HypergenError(f"--depths: expected comma-separated integers, got {depths!r}") from None
    if not depth_list or min(depth_list) < 1:
        raise HypergenError(f"--depths: expected positive integers, got {depths!r}")
    _quiet_hub()
    config = BenchConfig(run_dir=run_dir, size=size or "tiny", tasks=num_tasks, steps=steps, depths=depth_list,
                         eval_every=eval_every, device=device, threads=threads, log=lambda m: click.echo(m, err=True))
    result = run_bench(config)
    folder = Path(output) if output else Path("runs") / "bench" / (Path(run_dir).name if run_dir else config.size)
    json_path, png_path, _ = write_outputs(result, folder)
    click.echo(format_table(result))
    click.echo(f"written {json_path} and {png_path}")



@main.group("plot")
def plot_group() -> None:
    """Plot training-loss curves of runs, and a hypernetwork's generator self-attention."""


@plot_group.command("loss")
@click.option("--run", "runs", multiple=True, required=True, type=click.Path(file_okay=False),
              help="A run folder with metrics.jsonl; repeat to draw several runs on one plot.")
@click.option("--label", "labels", multiple=True, help="A label per --run, in order (default: folder names).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="The PNG to write (default: <first run>/plots/<metric>.png); the summary JSON goes beside it.")
@click.option("--window", type=click.IntRange(min=1), default=10, show_default=True,
              help="Points per window for the variance and the moving average.")
@click.option("--metric", default="loss", show_default=True,
              help="A numeric key of metrics.jsonl: loss (prediction cross-entropy), a regularizer's name (e.g. "
                   "local_consistency: its unweighted term), lr, examples_per_s, tokens_per_s, flops_per_s, "
                   "utilisation.")
def plot_loss_command(runs, labels, out, window, metric) -> None:
    """Draw each run's METRIC against step on one PNG; print a one-line summary per run.

    The variance printed (and written to the JSON beside the PNG) is the mean, over every window of WINDOW
    consecutive logged points in the second half of training (step > last logged step / 2; skipped steps left out),
    of the variance (ddof 0) of the metric within the window; with fewer points than WINDOW there, one window of
    all of them; n/a with fewer than 2.
    """
    from .plots.loss import format_summary, plot_loss

    png, json_path, summaries = plot_loss(runs, labels, out, window, metric)
    for summary in summaries:
        click.echo(format_summary(summary))
    click.echo(f"written {png} and {json_path}")


@plot_group.command("attention")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A trained hypernetwork run (HyperTuning, HART or a hybrid).")
@click.option("--tasks", "num_tasks", type=click.IntRange(min=1), default=8, show_default=True,
              help="Held-out tasks whose demos to average over.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="The PNG to write (default: RUN/plots/attention.png); the matrix JSON goes beside it.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def plot_attention_command(run_dir, num_tasks, out, device) -> None:
    """Heatmap of the generator's self-attention (last hypernetwork-decoder layer, mean over heads and tasks).

    Non-autoregressive runs (HyperTuning) are drawn row by row: 2p generated rows, the first p feeding every
    encoder layer, the last p every decoder layer. Autoregressive runs (HART) are aggregated to per-layer blocks
    (2 rows per layer) and are causal. The full matrix and the blocks are written as JSON beside the PNG.
    """
    from .plots.attention import check_hypernetwork_run, plot_attention
    from .runs import resolve_device

    resolved = resolve_device(device, "--device")
    check_hypernetwork_run(Path(run_dir))  # fail before loading any model
    _quiet_hub()
    png, json_path, summary = plot_attention(run_dir, num_tasks, out, resolved)
    kind = "autoregressive, causal" if summary["autoregressive"] else "non-autoregressive"
    click.echo(f"generator {summary['generator']} ({kind}): {summary['size']} generated rows, "
               f"{summary['heads']} heads, {len(summary['tasks'])} held-out tasks; {summary['blocks']['kind']} blocks "
               f"{', '.join(summary['blocks']['labels'])}")
    click.echo(f"written {png} and {json_path}")


if __name__ == "__main__":
    main()
