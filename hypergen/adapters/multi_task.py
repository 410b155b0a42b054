"""Queries of several tasks in one batch from Python: :func:`predict_many` (``hypergen.predict_many``).

    adapters = net.adapt([demos_a, demos_b])                       # TaskAdapters of one HyperNetwork
    hypergen.predict_many({"a": adapters[0], "b": adapters[1]}, [("a", "query 1"), ("b", "query 2")])
    hypergen.predict_many({"a": "adapters/a", "b": "adapters/b"}, ...)   # or adapter folders (`hypergen adapt`)

The same decoding as ``hypergen predict --adapter a=DIR --adapter b=DIR``: the adapters' parameters are stacked and
each batch mixes adapters, one ``generate`` per batch (see :mod:`hypergen.adapters.stack`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .stack import AdapterSet, load_adapter_set
from ..errors import HypergenError
from ..evaluation.predict import predict_rows
from .task import TaskAdapter


def predict_many(adapters: Mapping[str, TaskAdapter | str | Path], queries: Iterable[tuple[str, str]],
                 batch_size: int = 16, max_new_tokens: int | None = None, base_model: str | None = None) -> list[str]:
    """Decode each ``(adapter name, query text)`` of ``queries`` with the adapter of that name; returns the
    predictions in the queries' order.

    ``adapters``: {name: adapter}, either all :class:`~hypergen.task_adapter.TaskAdapter` of one loaded
    ``HyperNetwork`` (``net.adapt(...)``; decoded on its main model) or all adapter folders written by ``hypergen
    adapt`` / ``save_pretrained`` (loaded onto the main model they name, or ``base_model``). Adapters that cannot
    share a batch (another target, rank, main model or prompt) raise a one-line :class:`HypergenError` naming two
    of them. ``batch_size`` consecutive queries form a batch, whichever adapters they name; default lengths and
    beams: the adapters' (their run's evaluation settings)."""
    if not isinstance(adapters, Mapping) or not adapters:
        raise HypergenError("predict_many: adapters must be a non-empty {name: TaskAdapter or folder} mapping")
    queries = list(queries)
    for i, query in enumerate(queries):
        if not (isinstance(query, (tuple, list)) and len(query) == 2 and all(isinstance(q, str) for q in query)):
            raise HypergenError(f"predict_many: queries[{i}]: expected a (adapter name, text) pair, got {query!r}")
        if query[0] not in adapters:
            raise HypergenError(f"predict_many: queries[{i}] names adapter {query[0]!r}; the adapters are "
                                f"{', '.join(map(repr, adapters))}")
    in_memory = [isinstance(a, TaskAdapter) for a in adapters.values()]
    if any(in_memory):
        if not all(in_memory):
            raise HypergenError("predict_many: give either TaskAdapters or adapter folders, not both "
                                "(save_pretrained() a TaskAdapter to decode it with folders)")
        if base_model is not None:
            raise HypergenError("predict_many: base_model= applies to adapter folders; TaskAdapters decode on "
                                "their HyperNetwork's main model")
        assembled = next(iter(adapters.values())).assembled
        others = [name for name, a in adapters.items() if a.assembled is not assembled]
        if others:
            raise HypergenError(f"predict_many: adapter {others[0]!r} comes from another HyperNetwork than "
                                f"{next(iter(adapters))!r}; TaskAdapters must share one")
        stacked = AdapterSet.stack({name: a._adapter() for name, a in adapters.items()})
        model, tokenizer = assembled.method.main_model, assembled.tokenizer
    else:
        stacked, model, tokenizer = load_adapter_set(dict(adapters), base_model)
    if not queries:
        return []
    rows = stacked.rows([name for name, _ in queries]).tolist()
    return predict_rows(stacked, rows, model, tokenizer, [text for _, text in queries], batch_size, max_new_tokens,
                        progress=False)
