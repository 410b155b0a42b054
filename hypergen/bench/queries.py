"""The cost of every query after adaptation: answering with the task's generated adapter against answering in
context, on the same frozen main model.

* ``in_context``: the frozen model reads the task's definition and two positive examples, then the query (Def+2Pos,
  the prompt of ``hypergen eval --frozen in_context``: what a user does without hypergen);
* ``adapter``: the model with the task's generated parameters (one hypernetwork pass, done before and not counted
  here) reads the query alone, in the run's own prompt.

Both decode exactly ``new_tokens`` tokens greedily with the KV cache (``min_new_tokens`` = ``max_new_tokens``, so an
early end of turn does not make one path look cheaper), for a batch of 1 query and a batch of ``batch`` queries of
one task. Per path and batch size: the median seconds per query over tasks (a batch's time divided by its queries)
and the mean prompt tokens per query. The headline, in_context / adapter per query, is bounded above by the
ratio of the prompt lengths (prefill dominates a short answer).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..data.tasks import Task
from ..evaluation.frozen import frozen_collator
from ..models.adapted import adapted_generate, main_generate
from ..training.methods import HypernetMethod
from .latency import adapt
from .measure import summary, timed
from .setup import Setup

PATHS = ("in_context", "adapter")


@contextmanager
def exact_length(main_model, new_tokens: int) -> Iterator[None]:
    """Inside the block, ``generate()`` produces exactly ``new_tokens`` tokens (no early stop at end of turn)."""
    config = main_model.generation_config
    before = config.min_new_tokens
    config.min_new_tokens = new_tokens
    try:
        yield
    finally:
        config.min_new_tokens = before


def _queries(task: Task, count: int) -> list:
    pool = task.instances or task.positives
    return [pool[i % len(pool)] for i in range(count)]


def query_costs(setup: Setup, method: HypernetMethod, tasks: list[Task], batch: int, new_tokens: int,
                repeats: int = 2) -> dict[str, Any]:
    """Per path (``in_context``, ``adapter``) and batch size (1, ``batch``): ``per_query_s`` (median over tasks and
    ``repeats`` of seconds per query), ``prompt_tokens`` (mean per query), ``calls``; then ``ratio`` (in_context /
    adapter per query) and ``prompt_ratio`` per batch size. The paths alternate per task, so that load from other
    processes hits both alike; one warm-up call of each first."""
    main, device = setup.main, setup.device
    in_context, _ = frozen_collator(setup.tokenizer, main, setup.collator.cfg, "in_context")
    method.module.eval()

    def run(path: str, task: Task, size: int, parameters) -> tuple[float, int]:
        examples = _queries(task, size)
        if path == "in_context":
            encoded = in_context([(task, examples)], with_labels=False, demos_in_input=True).to(device)
            call = lambda: main_generate(main, encoded.input_ids, encoded.attention_mask, new_tokens)  # noqa: E731
        else:
            encoded = setup.collator([(task, examples)], with_labels=False).to(device)
            rows = parameters.select(torch.zeros(size, dtype=torch.long, device=device))
            call = lambda: adapted_generate(main, method.target, rows, encoded.input_ids,  # noqa: E731
                                            encoded.attention_mask, method.fusion, new_tokens)
        seconds, _ = timed(call, device)
        return seconds / size, int(encoded.attention_mask.sum()) // size

    sizes = sorted({1, batch})
    times = {path: {size: [] for size in sizes} for path in PATHS}
    tokens = {path: {size: [] for size in sizes} for path in PATHS}
    with torch.no_grad(), exact_length(main, new_tokens):
        parameters = {task.name: adapt(setup, method, task) for task in tasks}
        for path in PATHS:  # warm-up
            run(path, tasks[0], 1, parameters[tasks[0].name])
        for task in tasks:
            for size in sizes:
                for _ in range(repeats if size == 1 else 1):
                    for path in PATHS:
                        seconds, count = run(path, task, size, parameters[task.name])
                        times[path][size].append(seconds)
                        tokens[path][size].append(count)
    result: dict[str, Any] = {"new_tokens": new_tokens, "tasks": [t.name for t in tasks], "batch_sizes": sizes}
    for path in PATHS:
        result[path] = {f"batch_{size}": {"per_query_s": summary(times[path][size])["median_s"],
                                          "prompt_tokens": sum(tokens[path][size]) / len(tokens[path][size]),
                                          "calls": len(times[path][size])} for size in sizes}
        result[path]["per_query_s"] = result[path]["batch_1"]["per_query_s"]  # the latency of one query
    result["ratio"] = {f"batch_{size}": result["in_context"][f"batch_{size}"]["per_query_s"]
                       / result["adapter"][f"batch_{size}"]["per_query_s"] for size in sizes}
    result["prompt_ratio"] = {f"batch_{size}": result["in_context"][f"batch_{size}"]["prompt_tokens"]
                              / result["adapter"][f"batch_{size}"]["prompt_tokens"] for size in sizes}
    return result
