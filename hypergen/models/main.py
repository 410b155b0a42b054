"""Load the frozen main model: a model of a registered family (:mod:`hypergen.models.families`: T5, Llama, Qwen2,
Mistral, Gemma 3, GPT-2, ...) by hub id or local folder (the kind read from its config), a GGUF file, a folder with
one, or a packaged model's name (converted once into a cached folder: :mod:`hypergen.models.packaged`), or a tiny
model of a family's tiny builder (``main_model.tiny.architecture``).

A tiny model is built from a config with random weights and uses the file-less ``ByT5Tokenizer()`` (bytes as
tokens), so it runs with no download. A hub id that cannot be fetched fails at once with one line that says how to
point the recipe at a local folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, ByT5Tokenizer

from ..errors import HypergenError
from ..pretrained.hub import hub_reachable
from ..recipe import MainModel
from .families import family_of, tiny_family
from .families.t5 import tiny_t5  # noqa: F401 - re-exported
from .packaged import locate, resolve_main_model_path as _resolve, unknown_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_causal(spec, vocab_size: int):
    """A causal LM of ``spec.architecture`` (a family's tiny builder: "llama", "qwen2", "mistral", "gemma3",
    "gpt2", ...) and ``spec``'s widths with random weights (seeded by ``spec.seed``)."""
    return tiny_family(spec.architecture).tiny(spec, vocab_size)


def check_model_available(name_or_path: str, where: str = "main_model.name_or_path") -> None:
    """Fail fast, in one line, when ``name_or_path`` is neither a local folder, nor a GGUF file (or a folder with
    one), nor an installed packaged model, nor cached, nor fetchable. Converts nothing."""
    if locate(name_or_path, where) is not None:
        return
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
        raise HypergenError(unknown_name(name_or_path, where) or (
            f"{where}: cannot fetch {name_or_path!r} from the Hugging Face Hub (no network access from here) and it "
            f"is not in the local cache; download it elsewhere and point the recipe at the folder, e.g. "
            f"--set {where}=/path/to/{name_or_path.split('/')[-1]}"
        ))


def resolve_main_model_path(name_or_path: str, where: str = "main_model.name_or_path") -> str:
    """The Hugging Face folder or hub id that ``from_pretrained`` reads for ``name_or_path``: a GGUF form is
    converted (once, checked with :func:`check_supported`) into a cached folder, whose path is returned."""
    return _resolve(name_or_path, where, check=check_supported)


def load_main_model(spec: MainModel, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """Return ``(model, tokenizer)``; the model is in eval mode with every parameter frozen, in ``dtype``
    (default: the recipe's ``main_model.dtype``)."""
    dtype = dtype or DTYPES[spec.dtype]
    if spec.tiny is not None:
        tokenizer = ByT5Tokenizer()
        model = tiny_family(spec.tiny.architecture).tiny(spec.tiny, vocab_size=len(tokenizer))
    else:
        check_model_available(spec.name_or_path)
        source = resolve_main_model_path(spec.name_or_path)
        try:  # a damaged folder fails in many ways (truncated weights, bad config, wrong shapes): one line each
            tokenizer = AutoTokenizer.from_pretrained(source)
            seq2seq = getattr(AutoConfig.from_pretrained(source), "is_encoder_decoder", False)
            auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            model = auto.from_pretrained(source, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises for a file it cannot read
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HypergenError(f"main_model.name_or_path: cannot load {spec.name_or_path!r} ({type(exc).__name__}: "
                                f"{reason})") from None
    check_supported(model)
    if tokenizer.pad_token is None:  # Llama's tokenizer has none: pad with eos (padding is masked everywhere)
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype)
    freeze(model)
    return model, tokenizer


def check_supported(model) -> None:
    """A model of a registered family, with the modules its family reads, else one line naming the model's class."""
    try:
        family_of(model).check(model)
    except ValueError as exc:
        raise HypergenError(str(exc)) from None


def freeze(model: torch.nn.Module) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def save_main_model(model, tokenizer, folder: Path) -> None:
    """Save a Hugging Face folder (weights, config, tokenizer) that a recipe's ``name_or_path`` can name."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
