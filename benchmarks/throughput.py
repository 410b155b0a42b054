"""Training throughput per step: time in data, forward, backward and optimizer (the update, with the gradient
all-reduce of the old ``ddp`` path), examples/s and utilisation, for the tiny, base and T5-Large shapes with random
weights; optionally A/B against another commit in the same run.

    .venv/bin/python benchmarks/throughput.py                         # this checkout, every shape
    .venv/bin/python benchmarks/throughput.py --shapes tiny --against 2fe8a08 --rounds 3

What runs: ``Trainer.fit`` of a HART recipe (one process) on the embedded tasks, the first step (warm-up; the new
code counts FLOPs there) left out of every number. The phases are timed by wrapping, on the instances, the calls
the loop makes: getting a micro-batch (the sampler and collator, or the prefetcher's hand-over when batches are
prepared ahead: then only the wait is counted), ``method.loss`` (forward), the backend's backward, and
``backend.step`` (clipping, optimizer, and with the old ``ddp`` the all-reduce); on a GPU each wrapper synchronises
first (which itself costs a little). The rest of a step (logging, the progress bar, regularizer state copies) is
``other``. ``CPU ms/step``: the process's CPU time (every thread) in the median step, steadier than the wall
time when other processes share the cores (it leaves out the time spent waiting for one). FLOPs per step: counted once from the matmul shapes (torch's FlopCounterMode) of one micro-batch's
forward and backward, times the micro-batches; utilisation against a measured fp32 matmul (CPU) or the same
matmul in the training precision on a GPU.

``--against COMMIT`` checks COMMIT out into a temporary git worktree and runs this same file with that worktree's
``hypergen`` on the import path, in a subprocess, alternating with this checkout's for ``--rounds`` rounds (so
both see the same machine load); the medians are reported side by side.

Shapes ("CPU" depths are used when no GPU is present, so that a step takes seconds, not minutes):

* tiny: recipes/tiny_hart.json (the demo's settings: batch 32 of 4 tasks x 8 queries, prefix 8, k = 2) over
  tiny_finetune.json's main model shape (d_model 128, 3 + 2 layers), random weights.
* base: d_model 512, 6 + 6 layers (CPU: 2 + 2), batch 128 (CPU: 16), prefix 32, k = 6 (CPU: 2).
* t5-large: d_model 1024, d_ff 2816, 16 heads, 24 + 24 layers (CPU: 2 + 2), batch 32 (CPU: 4), prefix 32, k = 8
  (CPU: 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
CODE = Path(os.environ.get("HYPERGEN_CODE", ROOT))  # whose hypergen is measured (the A/B side)
sys.path.insert(0, str(CODE))

import torch  # noqa: E402

PHASES = ("data", "forward", "backward", "optimizer")


def shape_recipe(shape: str, gpu: bool, data_dir: str, steps: int) -> dict:
    tiny_hart = json.loads((ROOT / "recipes" / "tiny_hart.json").read_text())
    tiny_main = json.loads((ROOT / "recipes" / "tiny_finetune.json").read_text())["main_model"]["tiny"]
    if shape == "tiny":
        recipe = {k: v for k, v in tiny_hart.items() if k not in ("description", "evaluation")}
        recipe["main_model"] = {"tiny": tiny_main}
    else:
        d, ff, heads, layers, batch, k = {
            "base": (512, 2048, 8, 6 if gpu else 2, 128 if gpu else 16, 6 if gpu else 2),
            "t5-large": (1024, 2816, 16, 24 if gpu else 2, 32 if gpu else 4, 8 if gpu else 2)}[shape]
        recipe = {
            "main_model": {"tiny": {"d_model": d, "d_kv": 64, "d_ff": ff, "num_layers": layers,
                                    "num_decoder_layers": layers, "num_heads": heads}},
            "hypernetwork": {"decoder_layers": k, "regularizers": [{"name": "local_consistency", "alpha": 1.0}]},
            "peft": {"name": "prefix", "length": 32},
            "data": {**tiny_hart["data"], "max_demo_length": 256, "max_input_length": 64, "max_target_length": 16},
            "training": {**tiny_hart["training"], "batch_size": batch, "micro_batch_size": batch},
        }
    recipe["data"] = {**recipe["data"], "source": "embedded", "path": data_dir}
    recipe["training"] = {**recipe["training"], "steps": steps, "log_every": 10**6, "checkpoint_every": 10**6,
                          "device": "cuda" if gpu else "cpu"}
    recipe["main_model"]["tiny"]["dropout_rate"] = 0.0
    return recipe


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of 1024^3 products on ``device`` for about half a second."""
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ a
    sync()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.5:
        a @ a
        count += 1
    sync()
    return 2 * 1024**3 * count / (time.perf_counter() - started)


def measure(shape: str, steps: int) -> dict:
    """One side's numbers for ``shape``: per-step seconds by phase (medians over the timed steps), examples/s,
    FLOPs per step and utilisation."""
    from torch.utils.flop_counter import FlopCounterMode

    from hypergen.data.sampling import TaskSampler
    from hypergen.recipe import parse_recipe
    from hypergen.runs.assembly import assemble
    from hypergen.runs.tasks import load_tasks
    from hypergen.training.trainer import Trainer

    gpu = torch.cuda.is_available()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    with tempfile.TemporaryDirectory() as scratch:
        recipe = parse_recipe(shape_recipe(shape, gpu, str(Path(scratch) / "tasks"), steps + 1))
        torch.manual_seed(0)
        assembled = assemble(recipe, torch.device("cuda" if gpu else "cpu"))
        sampler = TaskSampler(load_tasks(recipe, "train"), 0, recipe.data.queries_per_task)
        trainer = Trainer(assembled.method, sampler, assembled.collator, recipe.training, Path(scratch) / "run",
                          assembled.device, progress=False)
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        spent = {phase: 0.0 for phase in PHASES}
        per_step: list[dict[str, float]] = []
        clock = {"step_start": None, "cpu_start": None}

        def timed(phase, fn):
            def wrapper(*args, **kwargs):
                sync()
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    sync()
                    spent[phase] += time.perf_counter() - started
            return wrapper

        method, backend = trainer.method, trainer.backend
        method.loss = timed("forward", method.loss)
        backward_name = "backward" if hasattr(backend, "backward") else "backward_if_finite"
        setattr(backend, backward_name, timed("backward", getattr(backend, backward_name)))
        step = backend.step

        def step_and_close(problem):
            result = timed("optimizer", step)(problem)
            now, cpu_now = time.perf_counter(), time.process_time()
            if clock["step_start"] is not None:
                per_step.append({**spent, "total": now - clock["step_start"], "cpu": cpu_now - clock["cpu_start"]})
            clock["step_start"], clock["cpu_start"] = now, cpu_now
            for phase in PHASES:
                spent[phase] = 0.0
            return result

        backend.step = step_and_close
        try:
            from hypergen.training import prefetch  # batches prepared ahead: the main thread's wait
            prefetch.PrefetchedBatches.next = timed("data", prefetch.PrefetchedBatches.next)
        except ImportError:
            sampler.next_batch = timed("data", sampler.next_batch)
            trainer.collator = timed("data", trainer.collator)
        trainer.fit()

        batch = assembled.collator(TaskSampler(load_tasks(recipe, "train"), 1, recipe.data.queries_per_task)
                                   .next_batch(trainer.tasks_per_micro), demos_in_input=0.0).to(assembled.device)
        with FlopCounterMode(display=False) as counter:
            loss, _ = method.loss(batch, 0)
            loss.backward()
        flops = counter.get_total_flops() * trainer.accumulation
    medians = dict(sorted(per_step, key=lambda s: s["total"])[len(per_step) // 2])  # the median step's phases
    medians["other"] = medians["total"] - sum(medians[p] for p in PHASES)
    peak = matmul_peak(assembled.device, torch.float32)
    return {"shape": shape, "device": torch.cuda.get_device_name() if gpu else "cpu", "steps": len(per_step),
            "seconds": medians, "examples_per_s": recipe.training.batch_size / medians["total"],
            "cpu_seconds": statistics.median(s["cpu"] for s in per_step),
            "flops_per_step": flops, "flops_per_s": flops / medians["total"], "peak_flops": peak,
            "utilisation": flops / medians["total"] / peak}


def run_side(code: Path, shape: str, steps: int) -> dict:
    env = {**os.environ, "HYPERGEN_CODE": str(code), "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, str(HERE), "--one", shape, "--steps", str(steps)], env=env,
                          capture_output=True, text=True, cwd=str(code))
    if done.returncode:
        raise SystemExit(f"{code}: {shape} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(results: list[dict]) -> dict:
    """The medians over rounds of one side's results."""
    first = results[0]
    seconds = sorted(results, key=lambda r: r["seconds"]["total"])[len(results) // 2]["seconds"]  # median round
    return {**first, "seconds": seconds, "rounds": len(results),
            **{k: statistics.median(r[k] for r in results)
               for k in ("examples_per_s", "cpu_seconds", "flops_per_s", "peak_flops", "utilisation")}}


def line(label: str, r: dict) -> str:
    s = r["seconds"]
    phases = " ".join(f"{p} {1000 * s[p]:.1f}" for p in (*PHASES, "other"))
    return (f"| {r['shape']} | {label} | {1000 * s['total']:.1f} | {1000 * r['cpu_seconds']:.1f} | {phases} | "
            f"{r['examples_per_s']:.1f} | "
            f"{r['flops_per_step'] / 1e9:.2f} | {r['utilisation']:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "base", "t5-large"])
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 20 tiny, 3 others)")
    parser.add_argument("--against", help="a commit to measure in the same run (A/B)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a subprocess: one shape, JSON on stdout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    sides = {"this checkout": ROOT}
    worktree = None
    if args.against:
        worktree = Path(tempfile.mkdtemp(prefix="hypergen-ab-")) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.against],
                       check=True, capture_output=True)
        sides = {args.against: worktree, **sides}
    try:
        print("| shape | code | ms/step | CPU ms/step | ms per phase | examples/s | GFLOP/step | utilisation |")
        print("|---|---|---|---|---|---|---|---|")
        for shape in args.shapes:
            steps = args.steps or (20 if shape == "tiny" else 3)
            results: dict[str, list[dict]] = {label: [] for label in sides}
            for _ in range(args.rounds):
                for label, code in sides.items():  # alternating: both sides see the same load
                    results[label].append(run_side(code, shape, steps))
            for label in sides:
                print(line(label, summarise(results[label])), flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)


if __name__ == "__main__":
    main()
