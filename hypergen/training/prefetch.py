"""The training micro-batches, drawn and tokenised one ahead in a background thread while the current one computes.

Exactly resumable: each batch comes with the sampler's state right after it was drawn, and
:attr:`PrefetchedBatches.consumed_state` is the state after the last batch handed out, so a checkpoint never counts
the batch drawn ahead (a resumed run draws it again). The tokenizer is not used from two threads at once: call
:meth:`~PrefetchedBatches.settle` before using the collator elsewhere (a periodic evaluation).

The one case drawn in the calling thread instead: a fractional ``demos_in_input`` (fine-tuning with demos for a
share of the examples), whose draws come from Python's global ``random``, which the trainer checkpoints and other
code in the main thread also draws from.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..data.collate import Batch, Collator
from ..data.sampling import TaskSampler


class PrefetchedBatches:
    """``next()``: the next micro-batch of ``tasks_per_micro`` draws (each with the sampler's queries), on ``device``.

    ``sampler``: a :class:`TaskSampler`, or anything with its ``next_batch`` (then :attr:`consumed_state` is None)."""

    def __init__(self, sampler: TaskSampler, collator: Collator, tasks_per_micro: int, demos_in_input: float,
                 device) -> None:
        self.sampler, self.collator, self.tasks_per_micro = sampler, collator, tasks_per_micro
        self.demos_in_input, self.device = demos_in_input, device
        self._stateful = hasattr(sampler, "state_dict")  # a test's stand-in may have no state to checkpoint
        self.consumed_state: dict[str, Any] | None = sampler.state_dict() if self._stateful else None
        ahead = not 0 < demos_in_input < 1
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="hypergen-batches") if ahead else None
        self._ahead: Future | None = None

    def _draw(self) -> tuple[Batch, dict[str, Any]]:
        batch = self.collator(self.sampler.next_batch(self.tasks_per_micro), demos_in_input=self.demos_in_input)
        return batch, self.sampler.state_dict() if self._stateful else None

    def next(self) -> Batch:
        """The next micro-batch; the one after it starts being prepared at once."""
        if self._worker is None:
            batch, state = self._draw()
        else:
            batch, state = (self._ahead or self._worker.submit(self._draw)).result()
            self._ahead = self._worker.submit(self._draw)
        self.consumed_state = state
        return batch.to(self.device)

    def settle(self) -> None:
        """Wait until the batch being prepared is ready (it is kept for :meth:`next`)."""
        if self._ahead is not None:
            self._ahead.exception()

    def close(self) -> None:
        """Stop the background thread and drop the batch drawn ahead: the sampler is left at
        :attr:`consumed_state`, as if it had never been drawn."""
        self.settle()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self._ahead = None
        if self._stateful:
            self.sampler.load_state_dict(self.consumed_state)
