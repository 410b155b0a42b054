"""``hypergen bench``: hypernetwork adaptation latency against backprop fine-tuning, measured in one process.

Paths measured on the same frozen main model (see :mod:`hypergen.bench.setup` for which hypernetworks):

* **hypernetwork adaptation** (:mod:`~hypergen.bench.latency`): a task's demos (text) -> tokenize -> one
  hypernetwork forward pass -> prefix (or LoRA) parameters. Median and spread over tasks, warm-up passes excluded.
* **backprop fine-tuning** (:mod:`~hypergen.bench.finetune`) of the frozen main model on one task's demos: peft
  LoRA (r=8 on q, v) and prefix tuning, AdamW. Time per step and for S steps; with a trained run, the steps and
  time until the fine-tuned model matches the hypernetwork's ROUGE-L on the task.
* the **ratio** fine-tuning time for S steps / hypernetwork adaptation latency (the headline: LoRA over the run's
  hypernetwork, or over HART without a run);
* **peak memory** of each path (see :func:`~hypergen.bench.measure.memory_method`);
* **depth scaling** (:mod:`~hypergen.bench.scaling`) of HART's autoregressive generator;
* **training throughput** (:mod:`~hypergen.bench.throughput`) of each benched hypernetwork, with the step's
  utilisation of the device's measured matmul throughput;
* **every query after adaptation** (:mod:`~hypergen.bench.queries`): the adapter against the demos in context,
  per-query latency and prompt tokens, batch of 1 and of 16;
* ``cost_ratios``: adaptation / one LoRA step on the same demos, HART's training step / HyperTuning's, and the
  per-query in-context / adapter ratios.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ..models.families import family_of
from ..training.methods import HypernetMethod
from .finetune import FT_METHODS, LORA_RANK, fine_tuning, hypernet_rouge
from .latency import adapt, adaptation_latency
from .measure import PeakMemory, memory_method
from .queries import query_costs
from .scaling import depth_scaling
from .setup import DEPTH_SCALING, BenchConfig, Setup, build_setup, distinct, pick_tasks
from .throughput import training_throughput


def machine_info(device: torch.device) -> dict[str, Any]:
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


def _build_hypernets(setup: Setup, first_task) -> tuple[dict[str, HypernetMethod], dict[str, Any]]:
    """Each benched hypernetwork, built from its recipe, with its size and the peak memory of building it and of
    its first adaptation pass."""
    methods: dict[str, HypernetMethod] = {}
    entries: dict[str, Any] = {}
    for label, recipe in setup.recipes.items():
        with PeakMemory(setup.device) as memory:
            methods[label] = method = setup.build_method(label)
            method.module.eval()
            adapt(setup, method, first_task)
        parameters = list(method.module.parameters())
        entries[label] = {"generator": recipe.hypernetwork.generator.name,
                          "regularizers": [spec.name for spec in recipe.hypernetwork.regularizers],
                          "trained": label in setup.trained, "parameters": sum(p.numel() for p in parameters),
                          "weights_mib": sum(p.numel() * p.element_size() for p in parameters) / 2 ** 20,
                          "peak_memory_mib": memory.delta_mib}
    return methods, entries


def run_bench(config: BenchConfig) -> dict[str, Any]:
    log = config.log
    started = time.perf_counter()
    setup = build_setup(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = setup.device
    tasks = pick_tasks(setup.tasks, config.tasks)
    main = setup.main
    cfg = main.config
    hyper = setup.recipes[setup.headline].hypernetwork
    result: dict[str, Any] = {
        "label": setup.label, "size": setup.preset.name, "run": config.run_dir,
        "machine": machine_info(device),
        "main_model": {**family_of(main).describe(cfg),
                       "parameters": sum(p.numel() for p in main.parameters()),
                       "dtype": str(next(main.parameters()).dtype)},
        "hypernetwork": {"decoder_layers": hyper.decoder_layers, "fusion_in_decoder": hyper.fusion_in_decoder},
        "lengths": {"max_demo_tokens": setup.collator.cfg.max_demo_length,
                    "max_input_tokens": setup.collator.cfg.max_input_length,
                    "max_target_tokens": setup.collator.cfg.max_target_length,
                    "num_positive": setup.collator.cfg.num_positive},
        "settings": {"tasks": config.tasks, "steps": config.steps, "eval_every": config.eval_every,
                     "eval_instances": config.eval_instances, "latency_warmup": setup.preset.latency_warmup,
                     "prefix_length": setup.preset.prefix_length, "lora_rank": LORA_RANK,
                     "lora_target_modules": list(family_of(main).default_lora_targets), "optimizer": "AdamW"},
        "memory_method": memory_method(device), "notes": list(setup.notes),
        "task_names": [t.name for t in tasks],
    }
    log(f"bench {setup.label}: main model {result['main_model']['parameters'] / 1e6:.1f}M parameters on {device}, "
        f"{len(tasks)} tasks, {config.steps} fine-tuning steps")

    methods, hypernets = _build_hypernets(setup, tasks[0])
    target = methods[setup.headline].target
    result["hypernetwork"].update({"target": type(target).__name__, **target.describe()})
    latencies = adaptation_latency(setup, methods, tasks, setup.preset.latency_warmup)
    for name, latency in latencies.items():
        hypernets[name]["latency"] = latency
        log(f"  {name}: adaptation latency median {latency['median_s'] * 1e3:.1f} ms")
    scaling = depth_scaling(setup, methods[DEPTH_SCALING], setup.recipes[DEPTH_SCALING].hypernetwork.generator,
                            config.depths, setup.preset.depth_repeats)
    hypernets[DEPTH_SCALING]["depth_scaling"] = scaling
    if scaling["cached"]["fit"]:
        log(f"  {DEPTH_SCALING}: generator time vs depth, exponent {scaling['cached']['fit']['exponent']:.2f} "
            "(KV cache)")
    throughputs = training_throughput(setup, methods, tasks)
    for name, throughput in throughputs.items():
        hypernets[name]["throughput"] = throughput
        log(f"  {name}: training throughput {throughput['examples_per_s']:.2f} examples/s")
    query_tasks = pick_tasks(setup.tasks, setup.preset.query_tasks)
    queries = query_costs(setup, methods[setup.headline], query_tasks, setup.preset.query_batch,
                          setup.preset.query_new_tokens)
    result["queries"] = queries
    log(f"  per query ({setup.headline}'s adapter vs in context, batch 1): {queries['adapter']['per_query_s']:.3f} s "
        f"vs {queries['in_context']['per_query_s']:.3f} s ({queries['ratio']['batch_1']:.2f}x)")
    del methods, target
    gc.collect()
    result["hypernetworks"] = hypernets

    reach = None
    if setup.trained:
        if all(not t.instances or t.instances[0].choices for t in tasks):
            result["notes"].append("tasks are multiple choice (rank classification): no ROUGE-L target to reach")
        else:
            trained = setup.trained[setup.headline]
            reach = {task.name: hypernet_rouge(setup, trained, task, task.instances[:config.eval_instances])
                     for task in distinct(tasks)}
            result["hypernet_rougeL_per_task"] = reach
    ft_tasks = distinct(tasks) if reach is not None else \
        tasks[: config.ft_tasks or min(len(tasks), setup.preset.ft_tasks)]
    finetunes: dict[str, Any] = {}
    for kind in FT_METHODS:
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
    lora_step = finetunes["lora"]["step"]["median_s"]
    costs = {f"adaptation_{name}/lora_step": entry["latency"]["median_s"] / lora_step
             for name, entry in hypernets.items()}
    if {"HART", "HyperTuning"} <= set(hypernets):
        costs["step_HART/step_HyperTuning"] = (hypernets["HART"]["throughput"]["step"]["median_s"]
                                               / hypernets["HyperTuning"]["throughput"]["step"]["median_s"])
    for size in queries["batch_sizes"]:
        costs[f"query_in_context/adapter_batch_{size}"] = queries["ratio"][f"batch_{size}"]
        costs[f"prompt_tokens_in_context/adapter_batch_{size}"] = queries["prompt_ratio"][f"batch_{size}"]
    result["cost_ratios"] = costs
    headline = ratios[f"lora/{setup.headline}"]
    result["headline"] = {
        "ratio": headline, "hypernetwork": setup.headline, "meaning": f"LoRA fine-tuning for {config.steps} steps "
        f"takes {headline:.0f}x as long as {setup.headline}'s adaptation (tokenize + one hypernetwork pass)"}
    result["wall_s"] = time.perf_counter() - started
    return result
