"""Memory of one HART training step at T5-Large size: parameters, gradients, optimizer state and peak RSS, with
AdamW versus bitsandbytes' 8-bit Adam and with and without gradient checkpointing.

    .venv/bin/python benchmarks/memory.py                      # writes benchmarks/results/memory.{md,json}
    .venv/bin/python benchmarks/memory.py --measure-layers 24  # peak RSS at full depth (needs ~12 GB free)

The configuration is built from known dimensions with random weights (no download): T5-Large (d_model 1024, d_kv
64, d_ff 2816 gated-gelu, 16 heads, 24 + 24 layers, vocabulary 32128; output layer tied to the embedding, as
transformers 5 loads the LM-adapted checkpoints), hypernetwork with the first k = 8 decoder layers, autoregressive generator, layer-wise MLP projector,
prefix length p = 32, fusion-in-decoder.

What is counted and how:

* bytes of parameters (trainable hypernetwork, frozen main model), gradients and optimizer state at full size are
  exact, computed from tensors: the model is built on the ``meta`` device (shapes and dtypes, no storage); the
  gradient of each trainable parameter has its shape and dtype; the optimizer state is measured by running the real
  optimizer (one step) on one real tensor of each distinct trainable shape and summing its state tensors' bytes.
* peak RSS (``ru_maxrss``, the process's resident-set high-water mark, CPU) of a fresh process that builds the
  model and runs one full training step (forward, backward, optimizer step) on short sequences; each configuration
  in its own process. By default at reduced depth (``--measure-layers``, same widths) because this machine has
  ~11 GB free; the step's own cost (peak minus RSS after building) is what checkpointing and the optimizer change.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypergen.data.collate import Batch  # noqa: E402
from hypergen.models.main import freeze  # noqa: E402
from hypergen.recipe import parse_recipe  # noqa: E402
from hypergen.runs.assembly import build_hypernet_method  # noqa: E402
from hypergen.training.activation_recompute import enable_gradient_checkpointing  # noqa: E402
from hypergen.training.optim import make_optimizer  # noqa: E402

CONFIGS = [("adamw", False), ("adamw", True), ("adam8bit", False), ("adam8bit", True)]


def recipe(layers: int, k: int, prefix: int, optimizer: str):
    return parse_recipe({
        "main_model": {"tiny": {"d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": layers,
                                "num_decoder_layers": layers, "num_heads": 16, "dropout_rate": 0.0}},
        "hypernetwork": {"decoder_layers": k, "regularizers": [{"name": "local_consistency", "alpha": 10.0}]},
        "peft": {"name": "prefix", "length": prefix},
        "data": {"source": "embedded"},
        "training": {"optimizer": optimizer, "lr": 5e-5},
    })


def build(layers: int, k: int, prefix: int, optimizer: str = "adamw", device: str = "cpu"):
    from transformers import T5Config, T5ForConditionalGeneration

    rec = recipe(layers, k, prefix, optimizer)
    config = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=layers,
                      num_decoder_layers=layers, num_heads=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    # as in the LM-adapted checkpoints' config; transformers 5 then ties the output layer to the embedding anyway
    # (it only keeps the flag as "no output rescaling"), which is what loading google/t5-large-lm-adapt gives
    with torch.device(device):
        torch.manual_seed(0)
        main_model = T5ForConditionalGeneration(config)
        freeze(main_model)
        method = build_hypernet_method(rec, main_model, torch.device(device))
    return rec, method


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(shapes: dict[tuple, int], optimizer: str) -> int:
    """Exact optimizer-state bytes for ``shapes`` ({shape: how many parameters have it}): one real step each."""
    total = 0
    for shape, count in shapes.items():
        p = torch.nn.Parameter(torch.zeros(shape))
        opt = make_optimizer([p], recipe(1, 1, 1, optimizer).training)
        p.grad = torch.ones(shape) * 1e-3
        opt.step()
        state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        total += count * nbytes(state)
        del opt, p
    return total


def exact_counts(layers: int, k: int, prefix: int) -> dict:
    _, method = build(layers, k, prefix, device="meta")
    trainable = [p for p in method.module.parameters() if p.requires_grad]
    frozen = list(method.main_model.parameters())
    shapes: dict[tuple, int] = {}
    for p in trainable:
        shapes[tuple(p.shape)] = shapes.get(tuple(p.shape), 0) + 1
    return {
        "trainable_params": sum(p.numel() for p in trainable),
        "frozen_params": sum(p.numel() for p in frozen),
        "trainable_param_bytes": nbytes(trainable),
        "frozen_param_bytes": nbytes(frozen),
        "gradient_bytes": nbytes(trainable),  # one gradient per trainable parameter, same shape and dtype
        "optimizer_state_bytes": {name: optimizer_state_bytes(shapes, name) for name in ("adamw", "adam8bit")},
    }


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_step(layers: int, k: int, prefix: int, optimizer: str, checkpointing: bool, tasks: int,
                 demo_len: int, input_len: int, target_len: int) -> dict:
    """One training step in this process; the RSS high-water mark before and after it."""
    torch.set_num_threads(2)
    _, method = build(layers, k, prefix, optimizer)
    if checkpointing:
        enable_gradient_checkpointing(method, True, True)
    opt = make_optimizer(method.module.parameters(), recipe(layers, k, prefix, optimizer).training)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randint(2, 32000, (tasks, demo_len), generator=g), torch.ones(tasks, demo_len, dtype=torch.long),
                  torch.arange(tasks), torch.randint(2, 32000, (tasks, input_len), generator=g),
                  torch.ones(tasks, input_len, dtype=torch.long), torch.randint(2, 32000, (tasks, target_len), generator=g),
                  [f"t{i}" for i in range(tasks)], [("",)] * tasks)
    built = rss_mb()
    started = time.perf_counter()
    method.train()
    loss, _ = method.loss(batch, 0)
    loss.backward()
    grads = nbytes([p.grad for p in method.module.parameters() if p.grad is not None])
    backward_peak = rss_mb()  # activations (forward, and recomputed ones in backward) + gradients
    opt.step()
    seconds = time.perf_counter() - started
    state = nbytes([v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)])
    peak = rss_mb()
    return {"optimizer": optimizer, "gradient_checkpointing": checkpointing, "rss_after_build_mb": round(built),
            "peak_rss_mb": round(peak), "step_rss_increase_mb": round(peak - built),
            "forward_backward_increase_mb": round(backward_peak - built),
            "gradient_bytes": grads, "optimizer_state_bytes": state, "step_seconds": round(seconds, 1),
            "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="encoder = decoder layers for the exact counts")
    parser.add_argument("--k", type=int, default=8, help="hypernetwork decoder layers for the exact counts")
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--measure-layers", type=int, default=6, help="depth of the RSS measurements")
    parser.add_argument("--measure-k", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2, help="tasks (= examples) in the measured step")
    parser.add_argument("--demo-len", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--target-len", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "optimizer,checkpointing" in a fresh process
    args = parser.parse_args()
    lengths = dict(tasks=args.tasks, demo_len=args.demo_len, input_len=args.input_len, target_len=args.target_len)
    if args.one:
        optimizer, ckpt = args.one.split(",")
        print(json.dumps(measure_step(args.measure_layers, args.measure_k, args.prefix, optimizer, ckpt == "1",
                                      **lengths)))
        return
    counts = exact_counts(args.layers, args.k, args.prefix)
    measured = []
    for optimizer, ckpt in CONFIGS:
        command = [sys.executable, __file__, "--one", f"{optimizer},{int(ckpt)}", "--prefix", str(args.prefix),
                   "--measure-layers", str(args.measure_layers), "--measure-k", str(args.measure_k),
                   *[x for key, v in lengths.items() for x in (f"--{key.replace('_', '-')}", str(v))]]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        measured.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(measured[-1], flush=True)
    result = {"full_size": {"layers": args.layers, "k": args.k, "prefix": args.prefix, **counts},
              "measured": {"layers": args.measure_layers, "k": args.measure_k, "prefix": args.prefix, **lengths,
                           "main_model_dtype": "float32", "device": "cpu", "steps": measured},
              "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(result: dict) -> str:
    gb = lambda b: f"{b / 2**30:.2f} GiB"
    full, m = result["full_size"], result["measured"]
    lines = [
        "# Memory of a training step at T5-Large size",
        "",
        "Written by `benchmarks/memory.py` (see its docstring for the method). Random weights from known dimensions: "
        "T5-Large (d_model 1024, d_kv 64, d_ff 2816 gated-gelu, 16 heads, vocab 32128), hypernetwork k decoder "
        "layers, HART autoregressive generator, layer-wise MLP projector, prefix p, fusion-in-decoder.",
        "",
        f"## Exact byte counts at full size ({full['layers']}+{full['layers']} layers, k={full['k']}, "
        f"p={full['prefix']}; fp32 weights)",
        "",
        "Counted from the tensors (meta-device model; optimizer state from one real step per distinct shape).",
        "",
        "| | parameters | bytes |",
        "|---|---:|---:|",
        f"| hypernetwork (trainable) | {full['trainable_params']:,} | {gb(full['trainable_param_bytes'])} |",
        f"| main model (frozen, fp32; half in bf16) | {full['frozen_params']:,} | {gb(full['frozen_param_bytes'])} |",
        f"| gradients | | {gb(full['gradient_bytes'])} |",
        f"| AdamW state (exp_avg, exp_avg_sq) | | {gb(full['optimizer_state_bytes']['adamw'])} |",
        f"| 8-bit Adam state (uint8 states, block absmax, qmaps) | | {gb(full['optimizer_state_bytes']['adam8bit'])} |",
        "",
        f"Weights + gradients + optimizer state: AdamW "
        f"{gb(full['trainable_param_bytes'] * 2 + full['frozen_param_bytes'] + full['optimizer_state_bytes']['adamw'])}"
        f", 8-bit Adam "
        f"{gb(full['trainable_param_bytes'] * 2 + full['frozen_param_bytes'] + full['optimizer_state_bytes']['adam8bit'])}"
        " (main model in fp32; activations not included).",
        "",
        f"## Measured peak RSS of one training step ({m['layers']}+{m['layers']} layers, k={m['k']}, same widths, "
        f"p={m['prefix']})",
        "",
        f"CPU, {m['tasks']} tasks x 1 query, demos {m['demo_len']} tokens, inputs {m['input_len']}, targets "
        f"{m['target_len']}; each row in a fresh process. Reduced depth because the full model with AdamW does not "
        "fit this machine's free memory; `--measure-layers 24 --measure-k 8` measures full depth elsewhere. "
        "Checkpointing: hypernetwork encoder and every main-model block (HART's cached decoder steps are not "
        "checkpointed). 'step increase' = peak RSS minus RSS after building the model and optimizer: activations, "
        "gradients and optimizer state of the step; 'fwd+bwd increase' = the high-water mark after the backward "
        "pass (before the optimizer step) minus RSS after building: activations and gradients, where "
        "checkpointing acts.",
        "",
        "| optimizer | checkpointing | RSS after build | fwd+bwd increase | peak RSS | step increase | gradients "
        "| optimizer state | step s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in m["steps"]:
        lines.append(f"| {s['optimizer']} | {'on' if s['gradient_checkpointing'] else 'off'} | "
                     f"{s['rss_after_build_mb']} MB | {s['forward_backward_increase_mb']} MB | "
                     f"{s['peak_rss_mb']} MB | {s['step_rss_increase_mb']} MB | "
                     f"{s['gradient_bytes'] / 2**20:.0f} MB | {s['optimizer_state_bytes'] / 2**20:.0f} MB | "
                     f"{s['step_seconds']} |")
    lines += ["", "Step seconds were measured on 2 shared CPU cores with other jobs running: indicative only.", "",
              f"torch {result['torch']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
