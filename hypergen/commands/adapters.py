"""``hypergen adapt`` (one task's adapter folder from a run) and ``hypergen predict`` (queries through it)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import HypergenError
from .options import _code_option, _quiet_hub


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="A trained hypernetwork run.")
@click.option("--task", "task_file", type=click.Path(dir_okay=False), help="An S-NI task file whose demos to use.")
@click.option("--demos", "demos_file", type=click.Path(dir_okay=False),
              help='JSONL: at most one {"definition": ...} line and {"input": ..., "output": ...} pairs.')
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The adapter folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_code_option
def adapt(run_dir, task_file, demos_file, out, overwrite, quiet) -> None:
    """Generate one task's PEFT parameters (one hypernetwork pass) and write them as an adapter folder.

    The run's PEFT target writes its own format: LoRA runs give a peft LoRA folder (adapter_config.json +
    adapter_model.safetensors); prefix runs give hypergen's prefix folder. A tiny main model is saved into OUT/base_model so `hypergen predict` can reload it.
    """
    from ..adapters import ADAPTER_FOLDER, export_adapter
    from ..data.jsonl import read_demos_file
    from ..data.tasks import load_task
    from ..folders import prepare_output_dir
    from ..runs import load_final, read_run
    from ..recipe import FinetuneRecipe

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


@click.command()
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(file_okay=False),
              help="An adapter folder written by `hypergen adapt` (or a peft LoRA folder of a T5).")
@click.option("--input", "input_file", required=True, type=click.Path(dir_okay=False),
              help='JSONL queries, {"input": ...} per line.')
@click.option("--output", "output_file", type=click.Path(dir_okay=False), help="JSONL predictions (default: stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Default: the run's evaluation setting.")
@click.option("--base-model", help="Main model to use instead of the adapter's base_model_name_or_path.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_code_option
def predict(adapter_dir, input_file, output_file, batch_size, max_new_tokens, base_model, quiet) -> None:
    """Run the adapter's main model with the adapter on every query; write {"input", "prediction"} lines."""
    from ..adapters import base_model_of, load_adapter, read_adapter_config
    from ..data.jsonl import read_queries
    from ..evaluation.predict import predict as run_predict, write_predictions
    from ..models.main import load_main_model
    from ..recipe import MainModel
    from ..runs import resolve_device

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
