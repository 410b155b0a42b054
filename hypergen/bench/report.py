"""Print and plot a ``hypergen bench`` result."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..io import atomic_write_json


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _depth_scaling(result: dict[str, Any]) -> tuple[str, dict[str, Any]] | tuple[None, None]:
    """The label and depth-scaling entry of the hypernetwork whose generator was scaled, if any."""
    for name, entry in result["hypernetworks"].items():
        if entry.get("depth_scaling"):
            return name, entry["depth_scaling"]
    return None, None


def _colors(names: list[str], palette: str) -> list:
    """One colour per name from the matplotlib colormap ``palette``, light to dark."""
    import matplotlib

    cmap = matplotlib.colormaps[palette]
    return [cmap(0.45 + 0.45 * i / max(len(names) - 1, 1)) for i in range(len(names))]


def format_table(result: dict[str, Any]) -> str:
    mm, lengths = result["main_model"], result["lengths"]
    layers = mm.get("layers") or f"{mm['num_layers']}+{mm['num_decoder_layers']}"  # older bench.json: T5 only
    steps = result["settings"]["steps"]
    # column widths: the default ones, wider where a label (a plugin's registered names) is longer
    name_width = max([11] + [len(name) for name in result["hypernetworks"]]) + 1
    path_width = max(34, name_width + len(" (tokenize + 1 pass)"))
    ratio_width = max([22] + [len(key) for key in result["ratios"]]) + 2
    lines = [
        f"hypergen bench: {result['label']} (main model {mm['parameters'] / 1e6:.1f}M parameters, d_model "
        f"{mm['d_model']}, {layers} layers; hypernetwork decoder k="
        f"{result['hypernetwork']['decoder_layers']}) on {result['machine']['device']}, "
        f"{result['machine'].get('torch_threads')} torch threads",
        f"lengths (tokens, at most): demos {lengths['max_demo_tokens']}, query {lengths['max_input_tokens']}, "
        f"target {lengths['max_target_tokens']}; {lengths['num_positive']} demos per task",
        "",
        f"{'adaptation path':<{path_width}}{'median ms':>12}{'p10 ms':>10}{'p90 ms':>10}{'peak MiB':>10}",
    ]
    for name, entry in result["hypernetworks"].items():
        lat = entry["latency"]
        lines.append(f"{name + ' (tokenize + 1 pass)':<{path_width}}{_ms(lat['median_s']):>12}{_ms(lat['p10_s']):>10}"
                     f"{_ms(lat['p90_s']):>10}{entry['peak_memory_mib']:>10.0f}")
    passes = [(name, entry["latency"]) for name, entry in result["hypernetworks"].items()]
    lines.append("  (adaptation passes: " + ", ".join(
        f"{name} {lat['flops'] / 1e9:.2f} GFLOP, {lat['flops_per_s'] / 1e9:.1f} GFLOP/s = {lat['utilisation']:.0%} "
        "of the device's peak" for name, lat in passes) + ")")
    for kind, entry in result["finetuning"].items():
        label = f"{'LoRA r=8' if kind == 'lora' else 'prefix'} FT, {steps} steps"
        s = entry["s_steps"]
        lines.append(f"{label:<{path_width}}{_ms(s['median_s']):>12}{_ms(s['min_s']):>10}{_ms(s['max_s']):>10}"
                     f"{entry['peak_memory_mib']:>10.0f}")
    lines.append("  (fine-tuning rows: median, min and max over tasks of the S steps' total; one step: "
                 + ", ".join(f"{k} {_ms(v['step']['median_s'])} ms" for k, v in result["finetuning"].items()) + ")")
    lines += ["", "ratio fine-tuning time for S steps / adaptation latency:"]
    for key, value in result["ratios"].items():
        lines.append(f"  {key:<{ratio_width}}{value:>10.1f}x")
    lines.append(f"headline: {result['headline']['meaning']}")
    reach = [(k, v) for k, v in result["finetuning"].items() if "reached_tasks" in v]
    if reach:
        lines += ["", "steps to reach the hypernetwork's ROUGE-L (per-task fine-tuning, evaluated every "
                  f"{result['settings']['eval_every']} steps):"]
        for kind, entry in reach:
            text = (f"  {kind:<8} reached on {entry['reached_tasks']}/{entry['scored_tasks']} tasks the hypernetwork "
                    f"scores above 0 on ({entry['zero_target_tasks']} with target 0 left out)")
            if entry["reached_tasks"]:
                text += (f"; median {entry['reached_steps']['median_s']:.0f} steps, "
                         f"{entry['reached_time']['median_s']:.2f} s of training")
            lines.append(text)
            for record in entry["per_task"]:
                got = (f"step {record['reached_step']} ({record['reached_s']:.2f} s)"
                       if record.get("reached_step") is not None else record.get("reached", "-"))
                lines.append(f"    {record['task']:<24} hypernet ROUGE-L {record['hypernet_rougeL']:5.1f}, "
                             f"{record['step0_rougeL']:5.1f} before fine-tuning: {got}")
    scaled, ar = _depth_scaling(result)
    if ar:
        lines += ["", f"{scaled}'s generator, time per generation vs main-model depth (width {ar['width']}):"]
        for name in ("cached", "recompute"):
            part = ar[name]
            cells = ", ".join(f"{d}: {_ms(t)} ms" for d, t in zip(part["depths"], part["seconds"]))
            fit = f"exponent {part['fit']['exponent']:.2f}" if part["fit"] else "no fit"
            lines.append(f"  {('KV cache' if name == 'cached' else 'use_cache=False'):<16}{cells}  ({fit})")
    lines += ["", "training throughput (forward + backward through the hypernetwork, no optimizer update):"]
    for name, entry in result["hypernetworks"].items():
        tp = entry["throughput"]
        lines.append(f"  {name:<{name_width}}{tp['examples_per_s']:>10.2f} examples/s ({tp['examples_per_step']} examples "
                     f"per step, {_ms(tp['step']['median_s'])} ms/step, peak {tp['peak_memory_mib']:.0f} MiB)")
        if "utilisation" in tp:
            lines.append(f"  {'':<{name_width}}{tp['flops_per_step'] / 1e9:>10.1f} GFLOP a step, "
                         f"{tp['flops_per_s'] / 1e9:.1f} GFLOP/s = {tp['utilisation']:.0%} of the measured peak")
    queries = result.get("queries")
    if queries:
        lines += ["", f"every query after adaptation ({queries['new_tokens']} new tokens, greedy, KV cache; "
                  f"{len(queries['tasks'])} tasks):"]
        for size in queries["batch_sizes"]:
            key = f"batch_{size}"
            ctx, own = queries["in_context"][key], queries["adapter"][key]
            lines.append(f"  batch {size:>2}: in context {_ms(ctx['per_query_s'])} ms/query ({ctx['prompt_tokens']:.0f} "
                         f"prompt tokens), adapter {_ms(own['per_query_s'])} ms/query ({own['prompt_tokens']:.0f}): "
                         f"{queries['ratio'][key]:.2f}x (prompt ratio {queries['prompt_ratio'][key]:.2f}x)")
    if result.get("cost_ratios"):
        lines += ["", "cost ratios:"] + [f"  {k:<{ratio_width + 14}}{v:>10.3f}" for k, v in result["cost_ratios"].items()]
    lines.append(f"\nwall time {result['wall_s']:.1f} s")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = result["settings"]["steps"]
    # 1: adaptation latency vs fine-tuning time
    names, values, errors = [], [], [[], []]
    hypernet_names = list(result["hypernetworks"])
    for name, entry in result["hypernetworks"].items():
        lat = entry["latency"]
        names.append(name)
        values.append(lat["median_s"])
        errors[0].append(lat["median_s"] - lat["p10_s"])
        errors[1].append(lat["p90_s"] - lat["median_s"])
    for kind, entry in result["finetuning"].items():
        s = entry["s_steps"]
        names.append(f"{'LoRA' if kind == 'lora' else 'prefix'} FT\n{steps} steps")
        values.append(s["median_s"])
        errors[0].append(s["median_s"] - s["min_s"])
        errors[1].append(s["max_s"] - s["median_s"])
    colors = _colors(hypernet_names, "Blues") + _colors(list(result["finetuning"]), "Oranges")
    axes[0].bar(names, values, yerr=errors, color=colors, capsize=4)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds (log)")
    axes[0].set_title(f"adaptation time ({result['label']}); headline {result['headline']['ratio']:.0f}x")
    # 2: depth scaling
    scaled, ar = _depth_scaling(result)
    if ar:
        for name, style in (("cached", "o-"), ("recompute", "s--")):
            part = ar[name]
            label = "KV cache" if name == "cached" else "use_cache=False"
            if part["fit"]:
                label += f" (exp {part['fit']['exponent']:.2f})"
            axes[1].plot(part["depths"], part["seconds"], style, label=label)
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[1].set_xticks(ar["depths"])
        axes[1].set_xticklabels([str(d) for d in ar["depths"]])
        axes[1].set_xlabel("main-model layers per side")
        axes[1].set_ylabel("seconds per generation")
        axes[1].set_title(f"{scaled} generator vs depth (width {ar['width']})")
        axes[1].legend()
    # 3: throughput
    rates = [result["hypernetworks"][n]["throughput"]["examples_per_s"] for n in hypernet_names]
    axes[2].bar(hypernet_names, rates, color=_colors(hypernet_names, "Blues"))
    axes[2].set_ylabel("examples / s")
    axes[2].set_title("training throughput (fwd + bwd)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """The result with NaN/infinite floats as null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_outputs(result: dict[str, Any], folder: Path) -> tuple[Path, Path, Path]:
    """``folder/bench.json``, ``folder/bench.png`` and ``folder/bench.txt`` (the printed table)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, png_path, txt_path = folder / "bench.json", folder / "bench.png", folder / "bench.txt"
    atomic_write_json(json_path, _finite(json.loads(json.dumps(result, default=str))))
    plot(result, png_path)
    txt_path.write_text(format_table(result) + "\n")
    return json_path, png_path, txt_path
