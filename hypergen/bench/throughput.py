"""Training throughput of the benched hypernetworks: examples/s of forward (``adapted_forward``'s loss + regularizers) and
backward through the hypernetwork, warm-up excluded, no optimizer update."""

from __future__ import annotations

from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from ..data.collate import Batch
from ..data.tasks import Task
from ..training.methods import HypernetMethod
from ..training.utilisation import peak_flops
from .measure import PeakMemory, summary, timed
from .setup import Setup


def throughput_batch(setup: Setup, tasks: list[Task]) -> Batch:
    """``throughput_tasks`` tasks with ``throughput_queries`` queries each (their instances, or positives)."""
    preset = setup.preset
    groups = []
    for i in range(preset.throughput_tasks):
        task = tasks[i % len(tasks)]
        pool = task.instances or task.positives
        groups.append((task, [pool[j % len(pool)] for j in range(preset.throughput_queries)]))
    return setup.collator(groups).to(setup.device)


def train_step(method: HypernetMethod, batch: Batch, index: int) -> None:
    loss, _ = method.loss(batch, index)
    loss.backward()
    method.module.zero_grad(set_to_none=True)


def training_throughput(setup: Setup, methods: dict[str, HypernetMethod],
                        tasks: list[Task]) -> dict[str, dict[str, Any]]:
    """Examples/s of ``method.loss`` (adapted_forward's loss + regularizers) forward + backward through the hypernetwork.

    One warm-up step per method (its peak memory is reported) and one counted step (its matrix products' FLOPs,
    forward and backward, by torch's FlopCounterMode), then the methods' steps interleaved. ``utilisation``: the
    step's FLOPs at the median step time over the device's dense fp32 matmul throughput (measured on a CPU)."""
    device = setup.device
    batch = throughput_batch(setup, tasks)
    memory: dict[str, float] = {}
    flops: dict[str, float] = {}
    for name, method in methods.items():
        method.train()
        with PeakMemory(device) as probe:
            train_step(method, batch, 0)
        memory[name] = probe.delta_mib
        with FlopCounterMode(display=False) as counter:  # the step's matrix products, forward and backward
            train_step(method, batch, 0)
        flops[name] = counter.get_total_flops()
    peak, peak_source = peak_flops(device, bf16=False)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for step in range(setup.preset.throughput_steps):
        for name, method in methods.items():
            times[name].append(timed(lambda: train_step(method, batch, step + 1), device)[0])
    results = {}
    for name, method in methods.items():
        method.eval()
        median = summary(times[name])["median_s"]
        results[name] = {"examples_per_step": batch.num_examples, "tasks_per_step": setup.preset.throughput_tasks,
                         "steps": len(times[name]), "step": summary(times[name]),
                         "examples_per_s": batch.num_examples / median, "peak_memory_mib": memory[name],
                         "flops_per_step": flops[name], "flops_per_s": flops[name] / median,
                         "utilisation": flops[name] / median / peak, "peak_flops": peak, "peak_source": peak_source,
                         "query_tokens_mean": float(batch.attention_mask.sum(1).float().mean()),
                         "target_tokens_mean": float((batch.labels != -100).sum(1).float().mean())}
    return results
