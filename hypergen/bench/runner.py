"""``hypergen bench``: hypernetwork adaptation latency against backprop fine-tuning, measured in one process.

Paths measured on the same frozen main model:

* **hypernetwork adaptation** (HART = ``autoregressive``, HyperTuning = ``non_autoregressive``): a task's demos
  (text) -> tokenize -> one hypernetwork forward pass -> prefix (or LoRA) parameters. Median and spread over tasks,
  warm-up passes excluded.
* **backprop fine-tuning** of the frozen main model on one task's demos (its positive examples as the training
  batch): peft LoRA (r=8 on q, v) and prefix tuning (learnable prefix tensors of length p through hypergen's
  :class:`~hypergen.components.targets.prefix.PrefixTarget`), AdamW. Time per step and for S steps; with a trained
  run, the steps and time until the fine-tuned model matches the hypernetwork's ROUGE-L on the task.
* the **ratio** fine-tuning time for S steps / hypernetwork adaptation latency (the headline);
* **peak memory** of each path (see :func:`~hypergen.bench.measure.memory_method`);
* **depth scaling** of the autoregressive generator (main-model depth 6..48 at a fixed width): time per generation
  with the KV cache and with ``use_cache=False`` (recompute), and the log-log fitted exponent;
* **training throughput** (examples/s) of HART against HyperTuning: forward (``adapted_loss`` + regularizer) and
  backward through the hypernetwork, warm-up excluded, no optimizer update.
"""

from __future__ import annotations

import copy
import gc
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..baselines import PerTaskTuner, demos_batch
from ..components.targets.prefix import PrefixTarget
from ..components.base import MainModelShape, PEFTTarget
from ..components.generators import AutoregressiveGenerator, NonAutoregressiveGenerator
from ..components.projectors import LayerwiseMLPProjector
from ..components.regularizers import LocalConsistency
from ..data.collate import Collator
from ..data.tasks import Task
from ..errors import HypergenError
from ..evaluation.metrics import rouge_l
from ..models.hypernet import HyperNetwork
from ..models.main import freeze
from ..recipe import Data, Evaluation
from ..runs import resolve_device
from ..training.methods import HypernetMethod
from .measure import PeakMemory, fit_power_law, memory_method, summary, timed

KINDS = {"autoregressive": "HART", "non_autoregressive": "HyperTuning"}
FT_METHODS = ("lora", "prefix")
LORA_RANK = 8


@dataclass
class SizePreset:
    """Dimensions and default lengths of a benchmark size (random weights, no download)."""

    name: str
    t5: dict[str, Any]
    data: dict[str, Any]
    decoder_layers: int
    prefix_length: int
    fusion: bool = True
    throughput_tasks: int = 4
    throughput_queries: int = 8
    throughput_steps: int = 3
    latency_warmup: int = 2
    recompute_max_depth: int = 48
    depth_repeats: int = 3
    lr_lora: float = 1e-3
    lr_prefix: float = 1e-2
    max_new_tokens: int = 12
    ft_tasks: int = 2  # without --run: tasks fine-tuned (from scratch, S steps each) for the step timings


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(
        "tiny",
        t5=dict(d_model=128, d_kv=32, d_ff=256, num_layers=3, num_decoder_layers=2, num_heads=4),
        data=dict(num_positive=4, max_demo_length=64, max_input_length=32, max_target_length=16,
                  include_definition=False, demo_style="compact"),
        decoder_layers=2, prefix_length=8),
    # T5-Large as in t5-v1_1 / lm-adapt: gated-gelu, d_ff 2816. t5-v1_1 unties the LM head (783M parameters);
    # transformers 5's T5Config always ties it (the flag only turns off the decoder-output rescaling, as v1_1 does),
    # so this model has 750M parameters: the same compute, one 32128 x 1024 matrix less memory.
    "t5-large": SizePreset(
        "t5-large",
        t5=dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16,
                vocab_size=32128, tie_word_embeddings=False),
        data=dict(num_positive=4, max_demo_length=256, max_input_length=64, max_target_length=16,
                  include_definition=True, demo_style="sni"),
        decoder_layers=8, prefix_length=32, throughput_tasks=1, throughput_queries=2, throughput_steps=1, ft_tasks=1,
        latency_warmup=1, recompute_max_depth=24, depth_repeats=2, lr_lora=1e-4, lr_prefix=1e-3),
}


@dataclass
class BenchConfig:
    run_dir: str | None = None
    size: str = "tiny"
    tasks: int = 8
    steps: int = 20
    depths: tuple[int, ...] = (6, 12, 24, 48)
    eval_every: int = 5
    eval_instances: int = 8
    ft_tasks: int | None = None  # tasks fine-tuned for the step timings without --run (default: min(tasks, 2))
    device: str = "auto"
    threads: int | None = None  # torch CPU threads, set after loading (a run's recipe may set its own)
    seed: int = 0
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class Setup:
    label: str
    main: nn.Module
    tokenizer: Any
    collator: Collator
    tasks: list[Task]
    device: torch.device
    preset: SizePreset
    target: PEFTTarget
    decoder_layers: int
    fusion: bool
    run_method: HypernetMethod | None = None
    run_kind: str | None = None
    max_new_tokens: int = 12
    notes: list[str] = field(default_factory=list)


def _embedded_test_tasks() -> list[Task]:
    from ..data.tasks import load_task_folder
    from ..runs import EMBEDDED_DIR
    from ..data.synthetic import ensure_embedded_tasks

    folder = ensure_embedded_tasks(EMBEDDED_DIR)
    return load_task_folder(folder, split="test", split_name="default", split_file=None)


def build_setup(config: BenchConfig) -> Setup:
    """The main model, tokenizer, tasks and target of a ``--size`` preset or of a trained ``--run``."""
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    if config.run_dir is not None:
        return _run_setup(config)
    if config.size not in SIZES:
        raise HypergenError(f"--size: expected one of {', '.join(SIZES)}, got {config.size!r}")
    preset = SIZES[config.size]
    device = resolve_device(config.device, "--device")
    tokenizer = ByT5Tokenizer()
    t5 = dict(preset.t5)
    t5.setdefault("vocab_size", len(tokenizer))
    t5_config = T5Config(**t5, dropout_rate=0.0, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                         pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        main = T5ForConditionalGeneration(t5_config)
    main = main.to(device)
    freeze(main)
    target = PrefixTarget(preset.prefix_length)
    target.prepare(main)
    data = Data(source="embedded", **preset.data)
    notes = ["random weights (no download); the ByT5 byte-level tokenizer supplies token ids"]
    return Setup(preset.name, main, tokenizer, Collator(tokenizer, data), _embedded_test_tasks(), device, preset,
                 target, preset.decoder_layers, preset.fusion, max_new_tokens=preset.max_new_tokens, notes=notes)


def _run_setup(config: BenchConfig) -> Setup:
    from ..recipe import FinetuneRecipe
    from ..runs import load_final, load_tasks, read_run

    run = Path(config.run_dir)
    if not run.is_dir():
        raise HypergenError(f"--run: {run} does not exist")
    recipe = read_run(run)
    if isinstance(recipe, FinetuneRecipe):
        raise HypergenError(f"--run: {run} is a fine-tuning run; bench needs a trained hypernetwork run")
    device = None if config.device == "auto" else resolve_device(config.device, "--device")
    assembled = load_final(run, device)
    method: HypernetMethod = assembled.method
    tasks = load_tasks(recipe, "test", tokenizer=assembled.tokenizer)
    tiny = recipe.main_model.tiny
    preset = copy.deepcopy(SIZES["tiny" if tiny is not None or method.main_model.config.d_model <= 512
                                 else "t5-large"])
    prefix_length = recipe.peft.params.get("length", preset.prefix_length) if recipe.peft.name.startswith(
        "prefix") else preset.prefix_length
    preset.prefix_length = prefix_length
    kind = "autoregressive" if method.module.generator.autoregressive else "non_autoregressive"
    return Setup(run.name, method.main_model, assembled.tokenizer, assembled.collator, tasks, assembled.device,
                 preset, method.target, recipe.hypernetwork.decoder_layers, method.fusion, method, kind,
                 max_new_tokens=recipe.evaluation.max_new_tokens,
                 notes=[f"the run's trained {KINDS[kind]} hypernetwork; the other generator is built untrained at "
                        "the same size (latency does not depend on the weights)"])


def _pick_tasks(tasks: list[Task], count: int) -> list[Task]:
    usable = [t for t in tasks if t.positives or t.instances]
    if not usable:
        raise HypergenError("bench: no held-out task has demos")
    if count <= len(usable):  # spread over the list (held-out lists are often grouped by task family)
        return [usable[i * len(usable) // count] for i in range(count)]
    return [usable[i % len(usable)] for i in range(count)]


def _distinct(tasks: list[Task]) -> list[Task]:
    return list({task.name: task for task in tasks}.values())


def _build_hypernet(setup: Setup, kind: str, seed: int) -> HypernetMethod:
    if setup.run_method is not None and kind == setup.run_kind:
        return setup.run_method
    generator = AutoregressiveGenerator() if kind == "autoregressive" else NonAutoregressiveGenerator()
    torch.manual_seed(seed)
    groups = setup.target.slot_groups(setup.main)
    hypernet = HyperNetwork(setup.main, generator, LayerwiseMLPProjector(), groups, setup.decoder_layers)
    regularizers = [LocalConsistency(alpha=1.0)] if kind == "autoregressive" else []
    return HypernetMethod(setup.main, hypernet.to(setup.device), setup.target, regularizers, setup.fusion,
                          Evaluation(max_new_tokens=setup.max_new_tokens))


# ----------------------------------------------------------------------------------------- hypernetwork paths

def _adapt(setup: Setup, method: HypernetMethod, task: Task):
    """Tokenize ``task``'s demos and run the hypernetwork once (no grad): the adaptation path."""
    ids, mask = setup.collator.encode_demos([task])
    with torch.no_grad():
        return method.module(ids.to(setup.device), mask.to(setup.device))


def adaptation_latency(setup: Setup, methods: dict[str, HypernetMethod], tasks: list[Task],
                       warmup: int) -> dict[str, dict[str, Any]]:
    """Per task and method: tokenize its demos, then one hypernetwork forward pass (no grad).

    The methods are timed interleaved (task 1 with each, then task 2, ...), so that a burst of load from other
    processes hits them alike. ``warmup`` passes per method first, not counted."""
    device = setup.device
    for method in methods.values():
        method.module.eval()
        for _ in range(warmup):
            _adapt(setup, method, tasks[0])
    raw = {name: {"total": [], "tokenize": [], "tokens": []} for name in methods}
    for task in tasks:
        for name, method in methods.items():
            seconds_tok, (_, mask) = timed(lambda: setup.collator.encode_demos([task]), device)
            total, _ = timed(lambda: _adapt(setup, method, task), device)
            raw[name]["total"].append(total)
            raw[name]["tokenize"].append(seconds_tok)
            raw[name]["tokens"].append(int(mask.sum()))
    results = {}
    for name, values in raw.items():
        result = summary(values["total"])
        result["tokenize_median_s"] = summary(values["tokenize"])["median_s"]
        result["demo_tokens_mean"] = sum(values["tokens"]) / len(values["tokens"])
        result["per_task_s"] = values["total"]
        results[name] = result
    return results


def _throughput_batch(setup: Setup, tasks: list[Task]):
    preset = setup.preset
    groups = []
    for i in range(preset.throughput_tasks):
        task = tasks[i % len(tasks)]
        pool = task.instances or task.positives
        groups.append((task, [pool[j % len(pool)] for j in range(preset.throughput_queries)]))
    return setup.collator(groups).to(setup.device)


def _train_step(method: HypernetMethod, batch, index: int) -> None:
    loss, _ = method.loss(batch, index)
    loss.backward()
    method.module.zero_grad(set_to_none=True)


def training_throughput(setup: Setup, methods: dict[str, HypernetMethod], tasks: list[Task],
                        memory: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Examples/s of ``method.loss`` (adapted_loss + regularizers) forward + backward through the hypernetwork.

    One warm-up step per method (its peak memory goes to ``memory``), then the methods' steps interleaved."""
    device = setup.device
    batch = _throughput_batch(setup, tasks)
    for name, method in methods.items():
        method.train()
        with PeakMemory(device) as probe:
            _train_step(method, batch, 0)
        memory[name] = probe.delta_mib
    times: dict[str, list[float]] = {name: [] for name in methods}
    for step in range(setup.preset.throughput_steps):
        for name, method in methods.items():
            times[name].append(timed(lambda: _train_step(method, batch, step + 1), device)[0])
    results = {}
    for name, method in methods.items():
        method.eval()
        median = summary(times[name])["median_s"]
        results[name] = {"examples_per_step": batch.num_examples, "tasks_per_step": setup.preset.throughput_tasks,
                         "steps": len(times[name]), "step": summary(times[name]),
                         "examples_per_s": batch.num_examples / median, "peak_memory_mib": memory[name],
                         "query_tokens_mean": float(batch.attention_mask.sum(1).float().mean()),
                         "target_tokens_mean": float((batch.labels != -100).sum(1).float().mean())}
    return results


def depth_scaling(setup: Setup, method: HypernetMethod, depths: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Time of one autoregressive generation for main models of ``depths`` layers (encoder = decoder = depth) at
    the main model's width, with the hypernetwork's decoder (random states stand in for the encoder output)."""
    device = setup.device
    decoder = method.module.decoder
    d_model = method.module.d_model
    n_d = setup.collator.cfg.max_demo_length
    torch.manual_seed(0)
    states = torch.randn(1, n_d, d_model, device=device)
    mask = torch.ones(1, n_d, dtype=torch.long, device=device)
    result: dict[str, Any] = {"depths": list(depths), "width": d_model, "hypernet_decoder_layers": len(decoder.block),
                              "demo_tokens": n_d, "repeats": repeats}
    for name, use_cache in (("cached", True), ("recompute", False)):
        generator = AutoregressiveGenerator(use_cache=use_cache).to(device)
        generator.build(d_model, MainModelShape(1, 1), 1)
        generator.to(device)
        times = []
        chosen = [d for d in depths if use_cache or d <= setup.preset.recompute_max_depth]
        for depth in chosen:
            shape = MainModelShape(depth, depth)
            with torch.no_grad():
                run = lambda: generator(decoder, states, mask, shape)  # noqa: E731
                run()  # warm-up
                times.append(min(timed(run, device)[0] for _ in range(repeats)))
        result[name] = {"depths": chosen, "seconds": times,
                        "fit": fit_power_law(chosen, times) if len(chosen) >= 2 else None}
    return result


# ----------------------------------------------------------------------------------------- fine-tuning paths

def _tuner(setup: Setup, kind: str, seed: int) -> PerTaskTuner:
    lr = setup.preset.lr_lora if kind == "lora" else setup.preset.lr_prefix
    return PerTaskTuner(setup.main, kind, lr, seed, prefix_length=setup.preset.prefix_length, lora_rank=LORA_RANK)


def _train_batch(setup: Setup, task: Task):
    return demos_batch(setup.collator, task, setup.device)


def _rouge(setup: Setup, predictions: torch.Tensor, instances) -> float:
    texts = setup.tokenizer.batch_decode(predictions, skip_special_tokens=True)
    return sum(rouge_l(t.strip(), list(e.outputs)) for t, e in zip(texts, instances)) / len(instances)


def hypernet_rouge(setup: Setup, task: Task, instances) -> float:
    method = setup.run_method
    method.eval()
    adapted = method.adapt(setup.collator([(task, instances[:1])], with_labels=False).to(setup.device))
    batch = setup.collator([(task, instances)], with_labels=False).to(setup.device)
    return _rouge(setup, method.generate(batch, adapted), instances)


def fine_tuning(setup: Setup, kind: str, tasks: list[Task], steps: int, reach: dict[str, float] | None,
                eval_every: int, eval_instances: int, seed: int) -> dict[str, Any]:
    """Fine-tune each task from scratch for ``steps`` steps (a global warm-up step first, not counted).

    With ``reach`` ({task name: hypernetwork ROUGE-L}) evaluate every ``eval_every`` steps on ``eval_instances``
    of the task's instances and record the first step (and training time, evaluation excluded) that matches it.
    """
    device = setup.device
    warm = _tuner(setup, kind, seed)
    warm.step(_train_batch(setup, tasks[0]))
    warm.close()
    step_times, run_totals, per_task = [], [], []
    for index, task in enumerate(tasks):
        tuner = _tuner(setup, kind, seed + index + 1)
        batch = _train_batch(setup, task)
        record: dict[str, Any] = {"task": task.name}
        goal = None if reach is None else reach.get(task.name)
        instances = task.instances[:eval_instances]
        query = setup.collator([(task, instances)], with_labels=False).to(device) if goal is not None else None
        elapsed = 0.0
        if goal is not None:
            score = _rouge(setup, tuner.generate(query, setup.max_new_tokens), instances)
            record.update({"hypernet_rougeL": goal, "step0_rougeL": score, "curve": [[0, 0.0, score]]})
            if score >= goal:
                record.update({"reached_step": 0, "reached_s": 0.0})
        for step in range(1, steps + 1):
            seconds, loss = timed(lambda: tuner.step(batch), device)
            step_times.append(seconds)
            elapsed += seconds
            if goal is not None and "reached_step" not in record and (step % eval_every == 0 or step == steps):
                score = _rouge(setup, tuner.generate(query, setup.max_new_tokens), instances)
                record["curve"].append([step, elapsed, score])
                if score >= goal:
                    record.update({"reached_step": step, "reached_s": elapsed})
        record["loss_last"] = loss
        record["steps_s"] = elapsed
        if goal is not None and "reached_step" not in record:
            record["reached_step"] = None
            record["reached"] = f"not reached in {steps} steps"
        run_totals.append(elapsed)
        per_task.append(record)
        tuner.close()
    result = {"trainable_parameters": None, "step": summary(step_times), "steps": steps,
              "s_steps": summary(run_totals), "tasks": len(tasks), "per_task": per_task,
              "train_examples": int(_train_batch(setup, tasks[0]).num_examples)}
    probe = _tuner(setup, kind, seed)
    result["trainable_parameters"] = sum(p.numel() for p in probe.params)
    # the trainable tensors, their gradients and AdamW's two moments: exact, unlike the RSS/CUDA peak
    result["trainable_state_mib"] = 4 * sum(p.numel() * p.element_size() for p in probe.params) / 2 ** 20
    result["lr"] = probe.optimizer.param_groups[0]["lr"]
    probe.close()
    if reach is not None:
        # a task the hypernetwork scores 0 on is reached trivially: counted apart, left out of the summaries
        scored = [r for r in per_task if r["hypernet_rougeL"] > 0]
        reached = [r for r in scored if r.get("reached_step") is not None]
        result["scored_tasks"] = len(scored)
        result["zero_target_tasks"] = len(per_task) - len(scored)
        result["reached_tasks"] = len(reached)
        if reached:
            result["reached_steps"] = summary([r["reached_step"] for r in reached])
            result["reached_time"] = summary([r["reached_s"] for r in reached])
    return result


# ----------------------------------------------------------------------------------------- the whole benchmark

def machine_info(device: torch.device) -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"nproc": os.cpu_count(), "torch": torch.__version__, "torch_threads":
                            torch.get_num_threads(), "python": platform.python_version(),
                            "platform": platform.platform(), "device": str(device)}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2 ** 20, 1)
        info["loadavg_at_start"] = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def run_bench(config: BenchConfig) -> dict[str, Any]:
    log = config.log
    started = time.perf_counter()
    setup = build_setup(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = setup.device
    tasks = _pick_tasks(setup.tasks, config.tasks)
    main = setup.main
    cfg = main.config
    result: dict[str, Any] = {
        "label": setup.label, "size": setup.preset.name, "run": config.run_dir,
        "machine": machine_info(device),
        "main_model": {"d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_heads": cfg.num_heads,
                       "num_layers": cfg.num_layers, "num_decoder_layers": cfg.num_decoder_layers,
                       "vocab_size": cfg.vocab_size, "feed_forward_proj": cfg.feed_forward_proj,
                       "parameters": sum(p.numel() for p in main.parameters()),
                       "dtype": str(next(main.parameters()).dtype)},
        "hypernetwork": {"decoder_layers": setup.decoder_layers, "fusion_in_decoder": setup.fusion,
                         "target": type(setup.target).__name__, **setup.target.describe()},
        "lengths": {"max_demo_tokens": setup.collator.cfg.max_demo_length,
                    "max_input_tokens": setup.collator.cfg.max_input_length,
                    "max_target_tokens": setup.collator.cfg.max_target_length,
                    "num_positive": setup.collator.cfg.num_positive},
        "settings": {"tasks": config.tasks, "steps": config.steps, "eval_every": config.eval_every,
                     "eval_instances": config.eval_instances, "latency_warmup": setup.preset.latency_warmup,
                     "prefix_length": setup.preset.prefix_length, "lora_rank": LORA_RANK,
                     "lora_target_modules": ["q", "v"], "optimizer": "AdamW"},
        "memory_method": memory_method(device), "notes": list(setup.notes),
        "task_names": [t.name for t in tasks],
    }
    log(f"bench {setup.label}: main model {result['main_model']['parameters'] / 1e6:.1f}M parameters on {device}, "
        f"{len(tasks)} tasks, {config.steps} fine-tuning steps")

    hypernets: dict[str, Any] = {}
    methods: dict[str, HypernetMethod] = {}
    for kind, name in KINDS.items():
        with PeakMemory(device) as memory:  # build + the first adaptation pass
            methods[name] = method = _build_hypernet(setup, kind, config.seed)
            method.module.eval()
            _adapt(setup, method, tasks[0])
        hypernets[name] = {"generator": kind, "trained": method is setup.run_method,
                           "parameters": sum(p.numel() for p in method.module.parameters()),
                           "weights_mib": sum(p.numel() * p.element_size()
                                              for p in method.module.parameters()) / 2 ** 20,
                           "peak_memory_mib": memory.delta_mib}
    latencies = adaptation_latency(setup, methods, tasks, setup.preset.latency_warmup)
    for name, latency in latencies.items():
        hypernets[name]["latency"] = latency
        log(f"  {name}: adaptation latency median {latency['median_s'] * 1e3:.1f} ms")
    scaling = depth_scaling(setup, methods["HART"], config.depths, setup.preset.depth_repeats)
    hypernets["HART"]["depth_scaling"] = scaling
    if scaling["cached"]["fit"]:
        log(f"  HART: generator time vs depth, exponent {scaling['cached']['fit']['exponent']:.2f} (KV cache)")
    throughputs = training_throughput(setup, methods, tasks, {})
    for name, throughput in throughputs.items():
        hypernets[name]["throughput"] = throughput
        log(f"  {name}: training throughput {throughput['examples_per_s']:.2f} examples/s")
    del methods, method
    gc.collect()
    result["hypernetworks"] = hypernets

    reach = None
    if setup.run_method is not None:
        if all(not t.instances or t.instances[0].choices for t in tasks):
            result["notes"].append("tasks are multiple choice (rank classification): no ROUGE-L target to reach")
        else:
            reach = {}
            for task in _distinct(tasks):
                reach[task.name] = hypernet_rouge(setup, task, task.instances[:config.eval_instances])
            result["hypernet_rougeL_per_task"] = reach
    ft_tasks = _distinct(tasks) if reach is not None else \
        tasks[: config.ft_tasks or min(len(tasks), setup.preset.ft_tasks)]
    finetunes: dict[str, Any] = {}
    for kind in ("prefix", "lora"):  # LoRA last: peft wraps the main model (undone after each task)
        with PeakMemory(device) as memory:
            finetunes[kind] = fine_tuning(setup, kind, ft_tasks, config.steps, reach, config.eval_every,
                                          config.eval_instances, config.seed)
        finetunes[kind]["peak_memory_mib"] = memory.delta_mib
        log(f"  {kind} fine-tuning: {finetunes[kind]['step']['median_s'] * 1e3:.1f} ms/step")
    result["finetuning"] = finetunes

    ratios = {}
    for ft, ft_entry in finetunes.items():
        for name, entry in hypernets.items():
            ratios[f"{ft}/{name}"] = ft_entry["s_steps"]["median_s"] / entry["latency"]["median_s"]
    result["ratios"] = ratios
    result["headline"] = {
        "ratio": ratios["lora/HART"], "meaning": f"LoRA fine-tuning for {config.steps} steps takes "
        f"{ratios['lora/HART']:.0f}x as long as HART's adaptation (tokenize + one hypernetwork pass)"}
    result["wall_s"] = time.perf_counter() - started
    return result
