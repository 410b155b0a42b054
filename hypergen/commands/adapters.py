"""``hypergen adapt`` (one task's adapter folder from a run), ``hypergen predict`` (queries through adapters) and
``hypergen check-adapter`` (can vLLM serve a folder?)."""

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
    from ..adapters.folder import ADAPTER_FOLDER, export_adapter
    from ..data.jsonl import read_demos_file
    from ..data.tasks import load_task
    from ..folders import prepare_output_dir
    from ..runs.folder import load_final, read_run
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


def adapter_folders(specs: tuple[str, ...]) -> dict[str, Path]:
    """{name: folder} of ``--adapter`` values: ``DIR`` (named by the folder's name) or ``NAME=DIR``."""
    folders: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or Path(spec).is_dir():  # a folder whose path holds "=" is a folder
            name, folder = Path(spec).resolve().name, spec
        if not name or not folder:
            raise HypergenError(f"--adapter {spec!r}: expected DIR or NAME=DIR")
        if name in folders:
            raise HypergenError(f"--adapter: two adapters are named {name!r} ({folders[name]} and {folder}); name "
                                "them with NAME=DIR")
        folders[name] = Path(folder)
    return folders


@click.command()
@click.option("--adapter", "adapter_specs", required=True, multiple=True,
              help="An adapter folder written by `hypergen adapt` (or a peft LoRA folder of a T5), as DIR (named by "
                   "the folder's name) or NAME=DIR. Repeat it for several tasks' adapters: their queries share "
                   "batches.")
@click.option("--input", "input_file", required=True, type=click.Path(dir_okay=False),
              help='JSONL queries, {"input": ...} per line; with several adapters {"input": ..., "adapter": NAME} '
                   '("task" is read as "adapter").')
@click.option("--output", "output_file", type=click.Path(dir_okay=False), help="JSONL predictions (default: stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Default: the run's evaluation setting.")
@click.option("--base-model", help="Main model to use instead of the adapters' base_model_name_or_path.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_code_option
def predict(adapter_specs, input_file, output_file, batch_size, max_new_tokens, base_model, quiet) -> None:
    """Run the adapters' main model on every query, each with its adapter; write {"input", "prediction"} lines
    ({"input", "adapter", "prediction"} with several adapters), in the input's order.

    Several adapters are stacked and every batch mixes them (per-example parameters, one generate per batch); they
    must share the target, its rank and targets, the main model and the prompt settings.
    """
    from ..adapters.stack import load_adapter_set
    from ..data.jsonl import read_adapter_queries
    from ..evaluation.predict import predict_rows, write_predictions

    folders = adapter_folders(adapter_specs)
    names, queries = read_adapter_queries(input_file, list(folders))  # bad input fails before any loading
    if quiet:
        _quiet_hub()
    adapters, model, tokenizer = load_adapter_set(folders, base_model)
    predictions = predict_rows(adapters, adapters.rows(names).tolist(), model, tokenizer, queries, batch_size,
                               max_new_tokens, progress=not quiet)
    text = write_predictions(output_file, queries, predictions, names if len(folders) > 1 else None)
    if output_file is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"{len(predictions)} predictions written to {output_file}", err=True)


@click.command("check-adapter")
@click.argument("folder", type=click.Path(file_okay=False))
def check_adapter(folder) -> None:
    """Check that vLLM can serve the LoRA adapter FOLDER as it is (peft's keys and module names, a rank vLLM's
    --max-lora-rank covers, no full weights, biases or DoRA, no prefix or fusion states); print each problem.
    Exit 2 when there is one."""
    from ..adapters.serving import check_vllm_compatible, smallest_max_lora_rank
    from ..io import read_json_object

    problems = check_vllm_compatible(folder)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise HypergenError(f"{folder}: not servable by vLLM as it is ({len(problems)} problem"
                            f"{'s' if len(problems) > 1 else ''} above)")
    rank = read_json_object(Path(folder) / "adapter_config.json", "adapter config")["r"]
    click.echo(f"{folder}: a peft LoRA folder vLLM can serve (r = {rank}: --enable-lora --max-lora-rank "
               f"{smallest_max_lora_rank(rank)})")
