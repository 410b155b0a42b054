"""Load the frozen main model: a Hugging Face T5-family seq2seq model by hub id or local folder, or a tiny T5.

A tiny T5 is built from a config with random weights and uses the file-less ``ByT5Tokenizer()`` (bytes as
tokens), so it runs with no download. A hub id that cannot be fetched fails at once with one line that says how to
point the recipe at a local folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, ByT5Tokenizer, T5Config
from transformers import T5ForConditionalGeneration

from ..errors import HypergenError
from ..hub import hub_reachable
from ..recipe import MainModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_t5(spec, vocab_size: int) -> T5ForConditionalGeneration:
    """A T5 of ``spec``'s widths with random weights (seeded by ``spec.seed``); ``spec.vocab_size`` when set,
    else ``vocab_size`` (the tokenizer's), embedding rows."""
    config = T5Config(
        vocab_size=spec.vocab_size or vocab_size, d_model=spec.d_model, d_kv=spec.d_kv, d_ff=spec.d_ff, num_layers=spec.num_layers,
        num_decoder_layers=spec.num_decoder_layers, num_heads=spec.num_heads, dropout_rate=spec.dropout_rate,
        feed_forward_proj=spec.feed_forward_proj, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        return T5ForConditionalGeneration(config)


def check_model_available(name_or_path: str, where: str = "main_model.name_or_path") -> None:
    """Fail fast, in one line, when ``name_or_path`` is neither a local folder, nor cached, nor fetchable."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HypergenError(f"{where}: {path} has no config.json; expected a Hugging Face model folder")
        return
    if name_or_path.startswith((".", "/", "~")):
        raise HypergenError(f"{where}: folder {path} does not exist")
    try:
        AutoConfig.from_pretrained(name_or_path, local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - not in the local cache
        pass
    if not hub_reachable():
        raise HypergenError(
            f"{where}: cannot fetch {name_or_path!r} from the Hugging Face Hub (no network access from here) and it "
            f"is not in the local cache; download it elsewhere and point the recipe at the folder, e.g. "
            f"--set {where}=/path/to/{name_or_path.split('/')[-1]}"
        )


def load_main_model(spec: MainModel, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """Return ``(model, tokenizer)``; the model is in eval mode with every parameter frozen, in ``dtype``
    (default: the recipe's ``main_model.dtype``)."""
    dtype = dtype or DTYPES[spec.dtype]
    if spec.tiny is not None:
        tokenizer = ByT5Tokenizer()
        model = tiny_t5(spec.tiny, vocab_size=len(tokenizer))
    else:
        check_model_available(spec.name_or_path)
        try:  # a damaged folder fails in many ways (truncated weights, bad config, wrong shapes): one line each
            tokenizer = AutoTokenizer.from_pretrained(spec.name_or_path)
            model = AutoModelForSeq2SeqLM.from_pretrained(spec.name_or_path, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises for a file it cannot read
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HypergenError(f"main_model.name_or_path: cannot load {spec.name_or_path!r} ({type(exc).__name__}: "
                                f"{reason})") from None
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "block"):
        raise HypergenError(f"main_model: {type(model).__name__} is not a T5-family encoder-decoder model")
    model = model.to(device=device, dtype=dtype)
    freeze(model)
    return model, tokenizer


def freeze(model: torch.nn.Module) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def save_main_model(model, tokenizer, folder: Path) -> None:
    """Save a Hugging Face folder (weights, config, tokenizer) that a recipe's ``name_or_path`` can name."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
