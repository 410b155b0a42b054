"""HyperTuning-PT's data side: texts cut into four chunks (sampler), and the chunks as the trainer's Batch (collator).

The :class:`~hypergen.training.trainer.Trainer` consumes them as it does a TaskSampler and a Collator:
``collator(sampler.next_batch(n))`` gives a :class:`~.collate.Batch` with one "task" per text, so a pre-training
step is a fine-tuning step of the same method on other data:

    demo_ids   = c1 + c4   (what the hypernetwork reads)     T x n_d
    input_ids  = c2        (what the frozen main model reads) T x n_x
    labels     = c3        (what it learns to predict)        T x n_y, padding -100

each with the tokenizer's special tokens (T5: a closing ``</s>``), as the task collator encodes its texts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import HypergenError
from ..data.collate import Batch

MAX_SKIPS_IN_A_ROW = 1000  # draws of too-short texts in a row before the chunk lengths are declared too long


@dataclass(frozen=True)
class Chunks:
    """One text's window of ``sum(chunk_lengths)`` token ids, cut into its four chunks (lists of token ids)."""

    first: list[int]
    second: list[int]
    third: list[int]
    fourth: list[int]


class ChunkSampler:
    """Draws texts of ``source`` (a sequence of documents, :mod:`.corpus`) and cuts each into :class:`Chunks`.

    A draw: a document uniformly at random (with replacement), tokenized without special tokens; a window of
    ``sum(chunk_lengths)`` consecutive tokens at a uniformly random offset (so a long document gives many windows),
    cut in order into c1, c2, c3, c4. A document shorter than the window is skipped (counted in ``skipped``) and
    another drawn. Everything comes from one ``random.Random(seed)``; :meth:`state_dict` saves it with the counts,
    so a resumed run draws what the uninterrupted one would have."""

    queries_per_task = 1  # one query (c2 -> c3) per text: the trainer's micro-batch holds that many texts

    def __init__(self, source: Sequence[str], tokenizer, chunk_lengths: Sequence[int], seed: int) -> None:
        if len(source) == 0:
            raise HypergenError(f"pretrain: the text source ({getattr(source, 'description', 'corpus')}) is empty")
        self.source = source
        self.tokenizer = tokenizer
        self.chunk_lengths = list(chunk_lengths)
        self.window = sum(self.chunk_lengths)
        self.drawn = 0    # texts drawn, used or skipped
        self.skipped = 0  # of them, too short for the window
        self._rng = random.Random(seed)

    def _draw(self) -> Chunks:
        for _ in range(MAX_SKIPS_IN_A_ROW):
            self.drawn += 1
            ids = self.tokenizer(self.source[self._rng.randrange(len(self.source))],
                                 add_special_tokens=False)["input_ids"]
            if len(ids) < self.window:
                self.skipped += 1
                continue
            start = self._rng.randrange(len(ids) - self.window + 1)
            bounds = [start]
            for length in self.chunk_lengths:
                bounds.append(bounds[-1] + length)
            return Chunks(*(ids[a:b] for a, b in zip(bounds, bounds[1:])))
        raise HypergenError(
            f"pretrain.chunk_lengths: {self.chunk_lengths} need texts of {self.window} tokens, but the last "
            f"{MAX_SKIPS_IN_A_ROW} drawn from {getattr(self.source, 'description', 'the corpus')} were all shorter; "
            "shorten the chunks or use longer texts")

    def next_batch(self, num_texts: int) -> list[Chunks]:
        """``num_texts`` windows, each from its own draw (the same text may be drawn twice)."""
        if num_texts < 1:
            raise ValueError(f"num_texts must be >= 1, got {num_texts}")
        return [self._draw() for _ in range(num_texts)]

    def report(self) -> dict[str, Any]:
        """What the pre-training read: the source, the window, texts drawn and skipped as too short."""
        return {"source": getattr(self.source, "description", "corpus"), "documents": len(self.source),
                "chunk_lengths": self.chunk_lengths, "texts_drawn": self.drawn, "texts_used": self.drawn - self.skipped,
                "texts_skipped_too_short": self.skipped}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the RNG state, the counts, and what identifies the sampled population."""
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss], "documents": len(self.source),
                "chunk_lengths": self.chunk_lengths, "drawn": self.drawn, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the sampler must read the same source with the same chunk lengths."""
        mine = self.state_dict()
        for field in ("documents", "chunk_lengths"):
            if state.get(field) != mine[field]:
                raise HypergenError(f"sampler state does not match this sampler: field '{field}' differs")
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.drawn, self.skipped = state["drawn"], state["skipped"]


class PretrainCollator:
    """:class:`Chunks` to the trainer's :class:`~.collate.Batch` (module docstring), right-padded."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def _padded(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        with_specials = [self.tokenizer.build_inputs_with_special_tokens(ids) for ids in rows]
        return self.tokenizer.pad({"input_ids": with_specials}, return_tensors="pt")

    def __call__(self, texts: list[Chunks], with_labels: bool = True, demos_in_input: bool | float = False) -> Batch:
        if demos_in_input:
            raise ValueError("pre-training puts no demos in the main model's input (a hypernetwork method's)")
        demos = self._padded([t.first + t.fourth for t in texts])
        inputs = self._padded([t.second for t in texts])
        labels = None
        if with_labels:
            target = self._padded([t.third for t in texts])
            labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
        return Batch(demos["input_ids"], demos["attention_mask"], torch.arange(len(texts)), inputs["input_ids"],
                     inputs["attention_mask"], labels, [f"text-{i}" for i in range(len(texts))], [()] * len(texts))
