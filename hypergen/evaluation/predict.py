"""``hypergen predict``: decode queries with a loaded adapter and write ``{"input", "prediction"}`` lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..io import atomic_write_text

if TYPE_CHECKING:
    from ..adapters import Adapter


def predict(adapter: Adapter, main_model: nn.Module, tokenizer, inputs: list[str], batch_size: int = 16,
            max_new_tokens: int | None = None, num_beams: int | None = None, max_input_length: int | None = None,
            progress: bool = True) -> list[str]:
    """Decode every input with the adapter applied, in batches (the same tokenization as evaluation: the run's
    collator, for a causal LM the run's prompt, its demo style's or the chat template). Unset options come from the
    adapter's settings (the run's evaluation and prompt settings)."""
    from tqdm.auto import tqdm

    from ..data.chat import stop_at_end_of_turn
    from ..data.collate import Collator
    from ..models.backbones import is_causal
    from ..recipe import Data

    settings = adapter.settings
    max_new_tokens = max_new_tokens or settings.get("max_new_tokens", 128)
    num_beams = num_beams or settings.get("num_beams", 1)
    max_input_length = max_input_length or settings.get("max_input_length", 512)
    device = next(main_model.parameters()).device
    data = Data.model_construct(max_input_length=max_input_length, demo_style=settings.get("demo_style", "sni"),
                                prompt=settings.get("prompt", "plain"))
    collator = Collator(tokenizer, data, causal=is_causal(main_model))
    stop_at_end_of_turn(main_model, collator)
    predictions: list[str] = []
    with tqdm(total=len(inputs), desc="predict", disable=not progress, leave=False) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            enc = collator.encode_inputs([(None, query) for query in chunk])
            output = adapter.generate(main_model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                      max_new_tokens, num_beams)
            predictions.extend(text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True))
            bar.update(len(chunk))
    return predictions


def write_predictions(path: str | Path | None, inputs: list[str], predictions: list[str]) -> str:
    """The JSONL text of ``{"input", "prediction"}`` lines, also written atomically to ``path`` when given."""
    text = "".join(json.dumps({"input": x, "prediction": y}) + "\n" for x, y in zip(inputs, predictions))
    if path is not None:
        atomic_write_text(Path(path), text)
    return text
