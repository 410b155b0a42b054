"""The generator's self-attention: which generated rows attend to which (the analogue of the HART paper's Fig. 1).

For a trained hypernetwork run, the demos of N held-out tasks go through the hypernetwork once; the self-attention
weights of the last hypernetwork-decoder layer, for every query row the generator produced, are averaged over heads
and tasks into an S x S matrix A (row i: how generated row i spreads its attention over rows j; rows sum to 1).

* non-autoregressive (HyperTuning): S = 2p learnable tokens decoded in one bi-directional pass; rows [0, p) feed
  every encoder layer of the main model and rows [p, 2p) every decoder layer, so rows are not per layer: the plot
  shows all S rows (E0.. encoder rows, D0.. decoder rows).
* autoregressive (HART): S = 2L rows, 2 per decoding step; step l's row 2l feeds encoder layer l and row 2l+1 decoder
  layer l (``reverse``: the last layer first). Step l attends to itself and every earlier step, so A is
  block-lower-triangular. The plot aggregates rows to per-layer blocks (L x L):
  B[a, b] = mean over rows i of block a of the sum over rows j of block b of A[i, j] (rows still sum to 1).

A causal-LM backbone has one group, "layers": HART has L rows (row l feeds layer l), HyperTuning p rows shared by
every layer; its generated tokens attend to the demos in the same softmax, so each row's weights on the generated
rows are renormalised to sum to 1 and the share they had before (the rest is on the demo tokens) is reported
per row as ``generated_share`` (T5: all 1, its demos are behind a separate cross-attention).

The weights are those the backbone's ``decode`` returns for its last layer (``output_attentions``), collected at
every decoding step and placed at their rows: with HART's KV cache step l's query rows see the rows so far, so the
full matrix is assembled from all the steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HypergenError
from ..io import atomic_write_json


def check_hypernetwork_run(run_dir: Path):
    """The run's recipe, or a one-line error naming the run: missing folder, not a run, a finetune run."""
    from ..recipe import FinetuneRecipe
    from ..runs.folder import read_run

    run = Path(run_dir)
    if not run.is_dir():
        raise HypergenError(f"--run: {run} does not exist")
    recipe = read_run(run)
    if isinstance(recipe, FinetuneRecipe):
        raise HypergenError(f"{run}: a finetune run has no hypernetwork; plot attention needs a hypernetwork run")
    if not (run / "hypernetwork.safetensors").is_file():
        raise HypergenError(f"{run}: no hypernetwork.safetensors; did training finish?")
    return recipe


def generator_attention(hypernet, demo_ids, demo_mask) -> tuple[np.ndarray, dict[str, list[list[int]]]]:
    """Run ``hypernet`` (a HyperNetwork, in eval mode) over T tasks' demos (``demo_ids``, ``demo_mask``: T x n_d).

    Returns ``(weights, rows)``: ``weights`` T x heads x S x S (float64; entry [t, h, i, j] is how much generated
    row i attends to row j in the last decoder layer; zero where row j was not visible to row i; a causal LM's
    weights on the demo tokens are left out, so its rows sum to less than 1) and ``rows``, the generator's
    ``GeneratedStates.rows`` ({group: per main-model layer, the rows feeding it}).
    """
    import torch

    backbone = hypernet.backbone
    calls: list[torch.Tensor] = []

    def recording_decode(inputs, context, *args, **kwargs):
        states, weights = type(backbone).decode(backbone, inputs, context, *args, **kwargs)
        if weights is None:
            raise HypergenError("plot attention: the hypernetwork decoder returned no attention weights")
        calls.append(weights.detach().float().cpu()[..., backbone.context_keys(context):])
        return states, weights

    backbone.decode = recording_decode  # this instance only, for this one pass
    try:
        with torch.no_grad():
            out = hypernet(demo_ids, demo_mask, output_attentions=True)
    finally:
        del backbone.decode
    size = out.generated.states.shape[1]
    if not calls:
        raise HypergenError("plot attention: the generator never ran the hypernetwork decoder's last layer")
    tasks, heads = calls[0].shape[:2]
    full = torch.zeros(tasks, heads, size, size, dtype=torch.float64)
    for weights in calls:  # each call: its queries are the last q of the k rows decoded so far
        queries, keys = weights.shape[-2:]
        if keys > size or queries > keys:
            raise HypergenError(f"plot attention: attention weights {tuple(weights.shape)} do not fit the generator's "
                                f"{size} rows")
        full[:, :, keys - queries:keys, :keys] = weights.double()
    return full.numpy(), out.generated.rows


def row_labels(rows: dict[str, list[list[int]]], size: int) -> list[str]:
    """A label per generated row: ``enc3``/``dec3`` for a row feeding only layer 3 of one side, ``E0``/``D0`` (row
    index within its side) for rows shared by every layer of a side (HyperTuning), ``-`` for rows nothing reads."""
    readers: dict[int, list[tuple[str, int]]] = {}
    for source, per_layer in rows.items():
        for layer, indices in enumerate(per_layer):
            for row in indices:
                readers.setdefault(row, []).append((source, layer))
    labels, shared_index = [], {}
    for row in range(size):
        who = readers.get(row, [])
        sides = sorted({s for s, _ in who})
        if not who:
            labels.append("-")
        elif len(who) == 1:
            labels.append(f"{who[0][0][:3]}{who[0][1]}")
        elif len(sides) == 1:
            count = shared_index.get(sides[0], 0)
            shared_index[sides[0]] = count + 1
            labels.append(f"{sides[0][0].upper()}{count}")
        else:
            labels.append("+".join(s[:3] for s in sides))
    return labels


def layer_blocks(rows: dict[str, list[list[int]]], size: int) -> list[tuple[str, list[int]]] | None:
    """Group rows by the main-model layer (index) they feed: ``[(label, rows)]`` ordered by generation (first row).

    None when some row feeds several layers (HyperTuning: rows are shared by all layers of a side). A row nothing
    reads (HART with more encoder than decoder layers: the last steps' decoder rows) joins its preceding row's
    block (the same decoding step).
    """
    layer_of: dict[int, int] = {}
    for per_layer in rows.values():
        for layer, indices in enumerate(per_layer):
            for row in indices:
                if layer_of.setdefault(row, layer) != layer:
                    return None
    if not layer_of:
        return None
    blocks: dict[int, list[int]] = {}
    previous = None
    for row in range(size):
        layer = layer_of.get(row, previous)
        if layer is None:
            return None
        blocks.setdefault(layer, []).append(row)
        previous = layer
    ordered = sorted(blocks.items(), key=lambda item: item[1][0])
    return [(f"L{layer}", members) for layer, members in ordered]


def side_blocks(rows: dict[str, list[list[int]]], size: int) -> list[tuple[str, list[int]]]:
    """Group rows by the side(s) of the main model they feed (``encoder``, ``decoder``, ``unused``)."""
    sides: dict[int, set[str]] = {}
    for source, per_layer in rows.items():
        for indices in per_layer:
            for row in indices:
                sides.setdefault(row, set()).add(source)
    groups: dict[str, list[int]] = {}
    for row in range(size):
        groups.setdefault("+".join(sorted(sides.get(row, {"unused"}))), []).append(row)
    return sorted(groups.items(), key=lambda item: item[1][0])


def aggregate(matrix: np.ndarray, blocks: list[tuple[str, list[int]]]) -> np.ndarray:
    """``matrix`` S x S -> K x K over K row blocks: mean over a block's query rows of the sum over the key rows of
    the other block (so rows still sum to 1 when they did)."""
    out = np.zeros((len(blocks), len(blocks)))
    for a, (_, queries) in enumerate(blocks):
        for b, (_, keys) in enumerate(blocks):
            out[a, b] = matrix[np.ix_(queries, keys)].sum(axis=1).mean()
    return out


def attention_summary(run_dir: str | Path, num_tasks: int = 8, device=None) -> dict[str, Any]:
    """Load the run (``hypergen.runs.folder.load_final``), run it on its first ``num_tasks`` held-out tasks' demos and
    return the JSON-ready summary: ``matrix`` S x S (mean over heads and tasks), ``row_labels`` (S), ``rows`` (the
    generator's row -> layer map), ``blocks`` (``kind`` "layer" or "side", ``labels``, ``rows``, ``matrix`` K x K),
    ``generator``, ``autoregressive``, ``tasks``, ``heads``."""
    from ..runs.folder import load_final
    from ..runs.tasks import load_tasks

    run = Path(run_dir)
    recipe = check_hypernetwork_run(run)
    assembled = load_final(run, device)  # device None: the recipe's training.device
    tasks = load_tasks(recipe, "test", tokenizer=assembled.tokenizer)[:num_tasks]
    hypernet = assembled.method.module
    hypernet.eval()
    demo_ids, demo_mask = assembled.collator.encode_demos(tasks)
    weights, rows = generator_attention(hypernet, demo_ids.to(assembled.device), demo_mask.to(assembled.device))
    share = weights.sum(axis=-1, keepdims=True)  # T x heads x S x 1: the weight on generated rows (1 for T5)
    matrix = (weights / share).mean(axis=(0, 1))
    size = matrix.shape[0]
    per_layer = layer_blocks(rows, size)
    kind, blocks = ("layer", per_layer) if per_layer is not None and len(per_layer) < size else \
        ("side", side_blocks(rows, size))
    generator = hypernet.generator
    return {
        "run": str(run), "generator": recipe.hypernetwork.generator.name,
        "autoregressive": generator.autoregressive,
        "reverse": bool(getattr(generator, "reverse", False)),
        "tasks": [t.name for t in tasks], "heads": int(weights.shape[1]), "size": size,
        "decoder_layer": hypernet.backbone.num_layers - 1,
        "generated_share": share.mean(axis=(0, 1))[:, 0].tolist(),
        "definition": "matrix[i][j]: self-attention weight of generated row i on row j in the last hypernetwork-"
                      "decoder layer, mean over heads and tasks; blocks.matrix[a][b]: mean over rows i in block a "
                      "of the sum over rows j in block b; generated_share[i]: the part of row i's attention on the "
                      "generated rows (the rest: on the demo tokens, a causal LM), which matrix renormalises to 1",
        "matrix": matrix.tolist(), "row_labels": row_labels(rows, size), "rows": rows,
        "blocks": {"kind": kind, "labels": [label for label, _ in blocks], "rows": [m for _, m in blocks],
                   "matrix": aggregate(matrix, blocks).tolist()},
    }


def plot_attention(run_dir: str | Path, num_tasks: int = 8, out: str | Path | None = None,
                   device=None) -> tuple[Path, Path, dict[str, Any]]:
    """Draw the run's generator attention as a heatmap (``out``, default ``RUN/plots/attention.png``) and write the
    summary of :func:`attention_summary` beside it (same path, ``.json``). Autoregressive runs are drawn per
    main-model layer (L x L blocks), non-autoregressive runs row by row (2p x 2p). Returns ``(png, json, summary)``."""
    run = Path(run_dir)
    png = Path(out) if out else run / "plots" / "attention.png"
    if png.suffix.lower() != ".png":
        raise HypergenError(f"--out: {png} should end in .png")
    summary = attention_summary(run, num_tasks, device)
    json_path = png.with_suffix(".json")

    from .figure import pyplot, save_png

    blocks = summary["blocks"]
    per_layer = blocks["kind"] == "layer"
    matrix = np.array(blocks["matrix"] if per_layer else summary["matrix"])
    labels = blocks["labels"] if per_layer else summary["row_labels"]
    size, heads, count = summary["size"], summary["heads"], len(summary["tasks"])
    if summary["autoregressive"]:
        title = (f"generator {summary['generator']}: autoregressive, causal (a step sees itself and earlier steps)\n"
                 f"{size} rows aggregated to {len(labels)} per-layer blocks"
                 + (" (reverse: last layer generated first)" if summary["reverse"] else ""))
    elif per_layer:
        title = (f"generator {summary['generator']}: non-autoregressive\n"
                 f"{size} rows aggregated to {len(labels)} per-layer blocks")
    else:
        title = (f"generator {summary['generator']}: non-autoregressive, bi-directional\n"
                 + ", ".join(f"{label}: rows {members[0]}..{members[-1]}"
                             for label, members in zip(blocks["labels"], blocks["rows"]))
                 + " (E*/D*: every encoder/decoder layer)")
    title += f"\nlast hypernetwork-decoder layer self-attention, mean over {heads} heads and {count} held-out tasks"

    plt = pyplot()
    side = min(9.0, max(5.5, 3.5 + 0.25 * len(labels)))
    fig, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(matrix, cmap="viridis", vmin=0.0, interpolation="nearest")
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    step = max(1, len(labels) // 32)
    ticks = list(range(0, len(labels), step))
    axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=90 if len(labels) > 12 else 0, fontsize=7)
    axis.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
    if not per_layer and len(blocks["rows"]) > 1:
        for members in blocks["rows"][1:]:  # lines between the sides' rows
            axis.axhline(members[0] - 0.5, color="white", linewidth=0.8)
            axis.axvline(members[0] - 0.5, color="white", linewidth=0.8)
    unit = "main-model layer" if per_layer else "generated row"
    axis.set_xlabel(f"attended {unit} (key)")
    axis.set_ylabel(f"{unit} (query)")
    axis.set_title(title, fontsize=8)
    fig.tight_layout()
    save_png(fig, png)
    atomic_write_json(json_path, summary)
    return png, json_path, summary
