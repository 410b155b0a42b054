"""HART's training step with and without deferred weight gradients, and HyperTuning's, interleaved in one process.

    PYTHONPATH=. .venv/bin/python benchmarks/deferred_gradients.py [--size t5-large] [--rounds 3] [--threads 2]

What runs: ``hypergen bench``'s training-throughput step (forward + backward through the hypernetwork, no optimizer
update; random weights of the named size, one task's batch) for "HART deferred" (as trained), "HART plain" (the
decoding steps' weight gradients accumulated by autograd step by step: hypergen/models/few_rows.py switched off
for the generator) and "HyperTuning", one step of each per round after a warm-up step, so all three see the same
machine load. Prints each step's seconds and the medians. Results: results/throughput.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hypergen.bench.setup import BenchConfig, build_setup  # noqa: E402
from hypergen.bench.throughput import train_step, throughput_batch  # noqa: E402
from hypergen.components import generators  # noqa: E402
from hypergen.models import few_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="t5-large")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = build_setup(BenchConfig(size=args.size))
    methods = {name: setup.build_method(name) for name in ("HART", "HyperTuning")}
    batch = throughput_batch(setup, setup.tasks)
    for method in methods.values():
        method.train()
        train_step(method, batch, 0)
    seconds: dict[str, list[float]] = {"HART deferred": [], "HART plain": [], "HyperTuning": []}
    for step in range(args.rounds):
        for label in seconds:
            generators.deferred_weight_gradients = (
                (lambda *modules: contextlib.nullcontext(0)) if label == "HART plain"
                else few_rows.deferred_weight_gradients)
            started = time.perf_counter()
            train_step(methods[label.split()[0]], batch, step + 1)
            seconds[label].append(time.perf_counter() - started)
            print(f"round {step + 1}: {label} {seconds[label][-1]:.2f} s", flush=True)
    generators.deferred_weight_gradients = few_rows.deferred_weight_gradients
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    print(f"{args.size}, {batch.num_examples} examples a step, {args.threads} threads, medians of {args.rounds}:")
    for label, median in medians.items():
        print(f"  {label:14s} {median:7.2f} s  ({median / medians['HyperTuning']:.2f}x HyperTuning)")


if __name__ == "__main__":
    main()
