"""Load the frozen main model: a Hugging Face T5-family seq2seq model or a Llama-style causal LM (Llama, Qwen2,
Mistral, ...) by hub id or local folder (the kind read from its config), a GGUF file, a folder with one, or a
packaged model's name (converted once into a cached folder: :mod:`hypergen.models.packaged`), or a tiny T5, Llama
or Qwen2.

A tiny model is built from a config with random weights and uses the file-less ``ByT5Tokenizer()`` (bytes as
tokens), so it runs with no download. A hub id that cannot be fetched fails at once with one line that says how to
point the recipe at a local folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, ByT5Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, T5Config
from transformers import T5ForConditionalGeneration

from ..errors import HypergenError
from ..hub import hub_reachable
from ..recipe import MainModel
from .backbones.causal import causal_layers
from .packaged import locate, resolve_main_model_path as _resolve, unknown_name

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


CAUSAL_ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def tiny_causal(spec, vocab_size: int):
    """A causal LM of ``spec.architecture`` ("llama" or "qwen2") and ``spec``'s widths with random weights (seeded
    by ``spec.seed``): hidden size ``d_model``, ``num_layers`` layers, ``num_heads`` heads of width ``d_kv``
    (``num_key_value_heads`` of them for keys/values), MLP width ``d_ff``; pad 0 and eos 1 as the ByT5 tokenizer."""
    kv_heads = spec.num_key_value_heads or spec.num_heads
    if spec.num_heads % kv_heads:
        raise HypergenError(f"main_model.tiny.num_key_value_heads: {kv_heads} does not divide num_heads "
                            f"{spec.num_heads}")
    config_class, model_class = CAUSAL_ARCHITECTURES[spec.architecture]
    config = config_class(
        vocab_size=spec.vocab_size or vocab_size, hidden_size=spec.d_model, intermediate_size=spec.d_ff,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=kv_heads,
        head_dim=spec.d_kv, attention_dropout=spec.dropout_rate, max_position_embeddings=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        return model_class(config)


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
        build = tiny_t5 if spec.tiny.architecture == "t5" else tiny_causal
        model = build(spec.tiny, vocab_size=len(tokenizer))
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
    """A T5-family encoder-decoder or a Llama-style causal LM, else one line naming the model's class."""
    if getattr(model.config, "is_encoder_decoder", False):
        if not hasattr(model, "encoder") or not hasattr(model.encoder, "block"):
            raise HypergenError(f"main_model: {type(model).__name__} is not a T5-family encoder-decoder model")
        return
    try:
        causal_layers(model)
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
