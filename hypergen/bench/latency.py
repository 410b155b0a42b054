"""Adaptation latency: a task's demos (text) -> tokenize -> one hypernetwork forward pass -> PEFT parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.tasks import Task
from ..training.methods import HypernetMethod
from ..training.utilisation import peak_flops
from .measure import summary, timed
from .setup import Setup


def adapt(setup: Setup, method: HypernetMethod, task: Task):
    """Tokenize ``task``'s demos and run the hypernetwork once (no grad): the adaptation path."""
    ids, mask = setup.collator.encode_demos([task])
    with torch.no_grad():
        return method.module(ids.to(setup.device), mask.to(setup.device))


def adaptation_latency(setup: Setup, methods: dict[str, HypernetMethod], tasks: list[Task],
                       warmup: int) -> dict[str, dict[str, Any]]:
    """Per task and method: tokenize its demos, then one hypernetwork forward pass (no grad).

    The methods are timed interleaved (task 1 with each, then task 2, ...), so that a burst of load from other
    processes hits them alike. ``warmup`` passes per method first, not counted. Per method: the summary of the
    total seconds (:func:`~hypergen.bench.measure.summary`), the median tokenization time, the mean number of demo
    tokens, the per-task totals, and the pass's FLOPs (counted from the matmul shapes on the first task, scaled to
    the mean demo tokens; see :mod:`hypergen.training.utilisation`), FLOP/s at the median and the utilisation of
    the device's peak."""
    device = setup.device
    for method in methods.values():
        method.module.eval()
        for _ in range(warmup):
            adapt(setup, method, tasks[0])
    raw = {name: {"total": [], "tokenize": [], "tokens": []} for name in methods}
    for task in tasks:
        for name, method in methods.items():
            seconds_tok, (_, mask) = timed(lambda: setup.collator.encode_demos([task]), device)
            total, _ = timed(lambda: adapt(setup, method, task), device)
            raw[name]["total"].append(total)
            raw[name]["tokenize"].append(seconds_tok)
            raw[name]["tokens"].append(int(mask.sum()))
    peak, _ = peak_flops(device, bf16=False)
    results = {}
    for name, values in raw.items():
        result = summary(values["total"])
        result["tokenize_median_s"] = summary(values["tokenize"])["median_s"]
        result["demo_tokens_mean"] = sum(values["tokens"]) / len(values["tokens"])
        result["per_task_s"] = values["total"]
        ids, mask = setup.collator.encode_demos([tasks[0]])
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:  # its module tracker needs autograd
            methods[name].module(ids.to(device), mask.to(device))
        flops = counter.get_total_flops() / max(values["tokens"][0], 1) * result["demo_tokens_mean"]
        result.update(flops=flops, flops_per_s=flops / result["median_s"],
                      utilisation=flops / result["median_s"] / peak)
        results[name] = result
    return results
