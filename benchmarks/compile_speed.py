"""``training.compile``: the compile time and the step time of a tiny HART training step, with and without.

The make-demo shape (hypergen/reproduce/plan.py SCALES["tiny"], recipes/tiny_hart.json's data and batch), random
weights, the embedded tasks. A step here is the loss, its backward pass and an AdamW update on one micro-batch of
``--batch`` examples; the first step (where torch.compile compiles) is reported apart from the fastest of the next
``--steps`` (the least disturbed by other processes on a shared machine).

    PYTHONPATH=. python benchmarks/compile_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hypergen.data.sampling import TaskSampler
from hypergen.recipe import parse_recipe
from hypergen.reproduce.plan import SCALES
from hypergen.runs.assembly import assemble
from hypergen.runs.tasks import load_tasks
from hypergen.training.compile import compile_blocks

ROOT = Path(__file__).resolve().parent.parent


def tiny_recipe(data_dir: Path, batch: int) -> dict:
    recipe = json.loads((ROOT / "recipes" / "tiny_hart.json").read_text())
    recipe.pop("description")
    recipe["main_model"] = {"tiny": dict(SCALES["tiny"].t5)}
    recipe["data"]["path"] = str(data_dir)
    recipe["training"].update(batch_size=batch, micro_batch_size=batch)
    return recipe


def measure(compiled: bool, steps: int, batch: int, data_dir: Path) -> dict[str, float]:
    recipe = parse_recipe(tiny_recipe(data_dir, batch))
    torch.manual_seed(0)
    assembled = assemble(recipe, torch.device("cpu"))
    method = assembled.method
    start = time.perf_counter()
    blocks = compile_blocks(method) if compiled else 0
    setup = time.perf_counter() - start
    tasks = load_tasks(recipe, "train")
    sampler = TaskSampler(tasks, 0, recipe.data.queries_per_task, True)
    optimizer = torch.optim.AdamW([p for p in method.module.parameters() if p.requires_grad], lr=1e-4)
    method.train()
    times = []
    for step in range(steps + 1):
        batch_groups = sampler.next_batch(max(1, batch // recipe.data.queries_per_task))
        begin = time.perf_counter()
        loss, _ = method.loss(assembled.collator(batch_groups), step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - begin)
    return {"blocks": blocks, "first_step_s": setup + times[0], "step_s": min(times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: measure(name == "compiled", args.steps, args.batch, Path(tmp) / "data")
                for name in ("eager", "compiled")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny HART, batch {args.batch}, fastest of "
          f"{args.steps} steps after the first\n")
    print("| training.compile | blocks compiled | first step incl. compile (s) | step (ms) | speedup |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {'true' if name == 'compiled' else 'false'} | {r['blocks']} | {r['first_step_s']:.1f} | "
              f"{1e3 * r['step_s']:.0f} | {rows['eager']['step_s'] / r['step_s']:.2f}x |")


if __name__ == "__main__":
    main()
