"""Queries of N tasks decoded in mixed batches (one stacked adapter set, each example its adapter's row) against one
adapter at a time (the same queries, each adapter's in its own batches), on a tiny causal LoRA run built in a
temporary folder. Prints a table and writes it, with the command, to benchmarks/results/multi_task_predict.md.

    PYTHONPATH=. python benchmarks/multi_task_predict.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from click.testing import CliRunner

RESULTS = Path(__file__).resolve().parent / "results" / "multi_task_predict.md"
# (adapters N, queries per adapter M): few queries per task (serving many tasks) up to many
SHAPES = ((16, 1), (8, 2), (8, 8), (4, 32))


def tiny_causal_run(root: Path) -> Path:
    """A 2-step tiny Llama LoRA run (rank 4 on q/v, no fusion) on the embedded tasks."""
    from hypergen.cli import main

    recipe = {
        "main_model": {"tiny": {"architecture": "llama", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                                "num_heads": 4, "num_key_value_heads": 2}},
        "hypernetwork": {"decoder_layers": 1, "fusion_in_decoder": False},
        "peft": {"name": "lora", "rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]},
        "data": {"source": "embedded", "path": str(root / "embedded"), "num_positive": 4, "demo_style": "compact",
                 "max_demo_length": 64, "max_input_length": 16, "max_target_length": 8, "queries_per_task": 2,
                 "eval_instances_per_task": 2},
        "training": {"steps": 2, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "checkpoint_every": None},
        "evaluation": {"max_new_tokens": 8},
    }
    (root / "recipe.json").write_text(json.dumps(recipe))
    result = CliRunner().invoke(main, ["train", str(root / "recipe.json"), "-o", str(root / "run"), "--quiet",
                                       "--no-eval"])
    if result.exit_code != 0:
        sys.exit(result.output)
    return root / "run"


def adapter_folders(run: Path, root: Path, count: int) -> dict[str, Path]:
    """``count`` adapters of synthetic demo sets (one hypernetwork pass), saved as adapter folders."""
    import hypergen

    net = hypergen.HyperNetwork.from_pretrained(run)
    demo_sets = [[{"input": f"{w}{i}", "output": f"{w}{i}{'x' * (i % 3 + 1)}"} for w in ("ab", "cd", "ef")]
                 for i in range(count)]
    return {f"task{i}": a.save_pretrained(root / f"task{i}") for i, a in enumerate(net.adapt(demo_sets))}


def timed(function, repeats: int) -> tuple[float, object]:
    """The median wall time (s) of ``repeats`` calls after one warm-up, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hypergen.adapters.stack import AdapterSet, load_adapter_set
    from hypergen.evaluation.predict import predict_rows

    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = tiny_causal_run(root)
        folders = adapter_folders(run, root, max(n for n, _ in SHAPES))
        stack, model, tokenizer = load_adapter_set(folders)
        for n, m in SHAPES:
            names = list(folders)[:n]
            queries = [(names[q % n], f"query {q} {'z' * (q % 5)}") for q in range(n * m)]  # interleaved tasks
            subset = AdapterSet.stack({name: stack_row(stack, name) for name in names})
            rows = subset.rows([name for name, _ in queries]).tolist()
            texts = [text for _, text in queries]
            mixed_s, mixed = timed(lambda: predict_rows(subset, rows, model, tokenizer, texts, args.batch_size,
                                                        progress=False), args.repeats)

            def one_at_a_time() -> list[str]:
                out: dict[int, str] = {}
                for i, name in enumerate(names):
                    mine = [q for q, (owner, _) in enumerate(queries) if owner == name]
                    single = AdapterSet.stack({name: stack_row(stack, name)})
                    got = predict_rows(single, [0] * len(mine), model, tokenizer, [texts[q] for q in mine],
                                       args.batch_size, progress=False)
                    out.update(zip(mine, got))
                return [out[q] for q in range(len(queries))]

            single_s, single = timed(one_at_a_time, args.repeats)
            rows_out.append((n, m, mixed_s, single_s, mixed == single))
            print(f"N={n} M={m}: mixed {mixed_s:.3f} s, one at a time {single_s:.3f} s, ratio "
                  f"{single_s / mixed_s:.2f}x, same predictions: {mixed == single}", flush=True)
    write_results(rows_out, args)


def stack_row(stack, name: str):
    """The loaded adapter ``name`` of ``stack`` as a one-adapter :class:`hypergen.adapters.Adapter`."""
    from hypergen.adapters.folder import Adapter

    i = stack.names.index(name)
    return Adapter(None, "lora", stack.target, {k: v[i:i + 1] for k, v in stack.params.items()}, None, None,
                   stack.settings)


def write_results(rows, args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Many tasks at once: mixed-batch predict against one adapter at a time",
        "",
        f"`PYTHONPATH=. python benchmarks/multi_task_predict.py --threads {args.threads} --repeats {args.repeats}"
        f" --batch-size {args.batch_size}`, torch {torch.__version__}, {args.threads} thread(s), CPU load average "
        f"{load:.1f} at the end (the machine is shared: timings are indicative).",
        "",
        "A tiny causal LoRA run (Llama, d_model 64, 2 layers, rank 4 on q_proj/v_proj, 8 new tokens), N adapters "
        "from one hypernetwork pass, M queries per adapter given in interleaved order. *mixed*: "
        "`predict_rows` over all N x M queries, batches of consecutive queries mixing adapters; *one at a time*: "
        "each adapter's queries in their own batches (the same loaded parameters, one adapter per stack). Median of "
        "the repeats after a warm-up; the main model is loaded once for both. Loading and adapting are not timed.",
        "",
        "| adapters N | queries per adapter M | mixed (s) | one at a time (s) | one at a time / mixed | same "
        "predictions |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {m} | {mixed:.3f} | {single:.3f} | {single / mixed:.2f}x | {same} |"
              for n, m, mixed, single, same in rows]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
