"""``hypergen predict``: decode queries with loaded adapters and write ``{"input", "prediction"}`` lines.

One adapter (:func:`predict`) is the case N = 1 of several (:func:`predict_rows`): the adapters are stacked
(:class:`hypergen.adapters.stack.AdapterSet`) and each batch, whichever adapters its queries name, is one
``generate`` with per-example parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..io import atomic_write_text

if TYPE_CHECKING:
    from ..adapters.stack import AdapterSet
    from ..adapters.folder import Adapter


def predict(adapter: Adapter, main_model: nn.Module, tokenizer, inputs: list[str], batch_size: int = 16,
            max_new_tokens: int | None = None, num_beams: int | None = None, max_input_length: int | None = None,
            progress: bool = True) -> list[str]:
    """Decode every input with the adapter applied, in batches (the same tokenization as evaluation: the run's
    collator, for a causal LM the run's prompt, its demo style's or the chat template). Unset options come from the
    adapter's settings (the run's evaluation and prompt settings)."""
    from ..adapters.stack import AdapterSet

    return predict_rows(AdapterSet.stack({"adapter": adapter}), [0] * len(inputs), main_model, tokenizer, inputs,
                        batch_size, max_new_tokens, num_beams, max_input_length, progress)


def predict_rows(adapters: AdapterSet, rows: list[int], main_model: nn.Module, tokenizer, inputs: list[str],
                 batch_size: int = 16, max_new_tokens: int | None = None, num_beams: int | None = None,
                 max_input_length: int | None = None, progress: bool = True) -> list[str]:
    """Decode ``inputs[i]`` with adapter ``rows[i]`` of ``adapters`` (its row in the stacked parameters), in
    batches of ``batch_size`` consecutive inputs that mix adapters freely; predictions in the inputs' order."""
    from tqdm.auto import tqdm

    from ..data.chat import stop_at_end_of_turn
    from ..data.collate import Collator
    from ..models.backbones import is_causal
    from ..recipe import Data

    settings = adapters.settings
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
            chunk_rows = torch.tensor(rows[start:start + batch_size], dtype=torch.long)
            output = adapters.generate(main_model, chunk_rows, enc["input_ids"].to(device),
                                       enc["attention_mask"].to(device), max_new_tokens, num_beams)
            predictions.extend(text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True))
            bar.update(len(chunk))
    return predictions


def write_predictions(path: str | Path | None, inputs: list[str], predictions: list[str],
                      adapter_names: list[str] | None = None) -> str:
    """The JSONL text of ``{"input", "prediction"}`` lines (``{"input", "adapter", "prediction"}`` with
    ``adapter_names``, one per input), also written atomically to ``path`` when given."""
    names = adapter_names if adapter_names is not None else [None] * len(inputs)
    lines = [{"input": x, **({"adapter": name} if name is not None else {}), "prediction": y}
             for x, name, y in zip(inputs, names, predictions)]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if path is not None:
        atomic_write_text(Path(path), text)
    return text
