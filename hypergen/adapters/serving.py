"""Can a serving stack load an adapter folder? :func:`check_vllm_compatible` checks a LoRA folder written by
``hypergen adapt`` (or peft) against peft's format and vLLM's documented LoRA loader, without running vLLM
(``hypergen check-adapter DIR`` prints the problems).

What vLLM's loader (``vllm/lora``: ``LoRAModel.from_local_checkpoint`` and ``PEFTHelper.validate_legal``) accepts:

* ``adapter_config.json`` (peft's ``LoraConfig``) and ``adapter_model.safetensors``;
* tensor keys ``base_model.model.<module path>.lora_A.weight`` (r x d_in) and ``.lora_B.weight`` (d_out x r) only:
  the keys are its source of truth for the adapted modules, each named by its last part, which must be a
  projection the model's vLLM implementation can adapt (:data:`VLLM_LORA_MODULES`); no ``modules_to_save``, no
  full weights (``lm_head``, ``embed_tokens``), no biases (``bias`` "none"), no DoRA;
* ``r`` at most the server's ``--max-lora-rank``, one of :data:`MAX_LORA_RANKS` (vLLM's ``MaxLoRARanks``), so at
  most 512;
* a decoder-only main model (``task_type`` CAUSAL_LM): vLLM serves no LoRA on T5.

What only hypergen can apply is not servable: a prefix adapter, and fusion-in-decoder states (vLLM would apply the
LoRA part alone, which is not the model the run trained).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import HypergenError

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
# The projections vLLM's Llama, Qwen2, Mistral and Gemma 3 implementations adapt (peft's names; vLLM packs q/k/v
# into qkv_proj and gate/up into gate_up_proj and maps peft's names onto them), and GPT-2's
LLAMA_STYLE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_MODULES = ("c_attn", "c_proj", "c_fc")
VLLM_LORA_MODULES = {"LlamaForCausalLM": LLAMA_STYLE_MODULES, "Qwen2ForCausalLM": LLAMA_STYLE_MODULES,
                     "MistralForCausalLM": LLAMA_STYLE_MODULES, "Gemma3ForCausalLM": LLAMA_STYLE_MODULES,
                     "GPT2LMHeadModel": GPT2_MODULES}
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_(A|B)\.weight")


def smallest_max_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that serves rank ``rank`` (None above 512)."""
    return next((value for value in MAX_LORA_RANKS if value >= rank), None)


def _main_model_config(folder: Path) -> dict[str, Any] | None:
    """The main model's ``config.json`` when the folder names a local one (else None: widths go unchecked)."""
    from .folder import base_model_of

    try:
        config = Path(base_model_of(folder)).expanduser() / "config.json"
        return json.loads(config.read_text()) if config.is_file() else None
    except (HypergenError, OSError, ValueError):
        return None


def _widths(module_path: str, model: dict[str, Any]) -> tuple[int, int] | None:
    """(d_in, d_out) of a Llama-style or GPT-2 projection from the main model's config, or None if unknown."""
    name = module_path.rsplit(".", 1)[-1]
    if "n_embd" in model:  # GPT-2: Conv1D widths
        width, inner = model["n_embd"], model.get("n_inner") or 4 * model["n_embd"]
        mlp = ".mlp." in module_path
        return {"c_attn": (width, 3 * width), "c_fc": (width, inner),
                "c_proj": (inner, width) if mlp else (width, width)}.get(name)
    if "hidden_size" not in model or "num_attention_heads" not in model:
        return None
    hidden, heads = model["hidden_size"], model["num_attention_heads"]
    head = model.get("head_dim") or hidden // heads
    kv = model.get("num_key_value_heads") or heads
    inner = model.get("intermediate_size")
    return {"q_proj": (hidden, heads * head), "k_proj": (hidden, kv * head), "v_proj": (hidden, kv * head),
            "o_proj": (heads * head, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
            "down_proj": (inner, hidden)}.get(name)


def _config_problems(config: dict[str, Any], settings: dict[str, Any], accepted: tuple[str, ...]) -> list[str]:
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(f"task_type is {config.get('task_type')!r}: vLLM serves LoRA on decoder-only models "
                        "(CAUSAL_LM), not on an encoder-decoder like T5")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        problems.append(f"r is {rank!r}, not a positive integer")
    elif smallest_max_lora_rank(rank) is None:
        problems.append(f"r = {rank} exceeds vLLM's largest --max-lora-rank {MAX_LORA_RANKS[-1]}")
    recipe_rank = (settings.get("peft") or {}).get("rank")
    if recipe_rank is not None and recipe_rank != rank:
        problems.append(f"r = {rank} but the run's recipe has rank {recipe_rank} (a padded or wrong export)")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        problems.append(f"lora_alpha is {config.get('lora_alpha')!r}, not a number")
    if config.get("use_dora"):
        problems.append("use_dora is true; vLLM does not serve DoRA")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; vLLM's loader needs 'none' (no LoRA biases)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (full weights); vLLM loads LoRA weights only")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in accepted]
        if unknown:
            problems.append(f"target_modules {unknown} are not projections vLLM adapts ({', '.join(accepted)})")
    elif not isinstance(targets, str):
        problems.append(f"target_modules is {targets!r}, neither a list of module names nor peft's regex")
    if settings.get("fusion_in_decoder"):
        problems.append("the run used fusion-in-decoder: its demo states (fusion.safetensors) are not servable by "
                        "vLLM, which would apply the LoRA part alone")
    return problems


def _weight_problems(state: dict, rank: Any, targets: Any, model: dict[str, Any] | None,
                     accepted: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in state.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            problems.append(f"key {key!r} is not base_model.model.<module>.lora_A/lora_B.weight (full weights, "
                            "biases and modules_to_save are not LoRA weights vLLM loads)")
            continue
        path, slot = match.groups()
        if path.rsplit(".", 1)[-1] not in accepted:
            problems.append(f"{path} is not a projection vLLM adapts ({', '.join(accepted)})")
        elif isinstance(targets, str) and re.fullmatch(targets, path) is None and \
                re.fullmatch(targets, path.rsplit(".", 1)[-1]) is None:
            problems.append(f"{path} is not matched by target_modules {targets!r}")
        pairs.setdefault(path, {})[slot] = tuple(tensor.shape)
    for path, shapes in pairs.items():
        if set(shapes) != {"A", "B"}:
            problems.append(f"{path} has lora_{next(iter(shapes))} without lora_{'B' if 'A' in shapes else 'A'}")
            continue
        a, b = shapes["A"], shapes["B"]
        widths = _widths(path, model) if model else None
        want_a = (rank, widths[0] if widths else a[-1])
        want_b = (widths[1] if widths else b[0], rank)
        if len(a) != 2 or len(b) != 2 or a != want_a or b != want_b:
            problems.append(f"{path} has lora_A {a} and lora_B {b}; r = {rank} and the main model need "
                            f"lora_A {want_a} (r x d_in) and lora_B {want_b} (d_out x r)")
    if not state:
        problems.append("adapter_model.safetensors holds no tensors")
    return problems


def check_vllm_compatible(folder: str | Path) -> list[str]:
    """The reasons vLLM's LoRA loader would reject ``folder`` or serve something other than what hypergen
    predicts (each one line, naming the file, key or field); empty when it can serve it with ``--enable-lora
    --max-lora-rank`` :func:`smallest_max_lora_rank` of its ``r``. Weight widths are checked against the main
    model's ``config.json`` when the folder names a local one (Llama-style and GPT-2 configs)."""
    from .folder import FUSION_WEIGHTS, SETTINGS
    from ..components.base import ADAPTER_CONFIG
    from ..io import read_json_object, read_safetensors

    folder = Path(folder)
    if not folder.is_dir():
        raise HypergenError(f"{folder}: not a folder")
    settings = read_json_object(folder / SETTINGS, "adapter file") if (folder / SETTINGS).is_file() else {}
    settings["fusion_in_decoder"] = bool(settings.get("fusion_in_decoder")) or (folder / FUSION_WEIGHTS).is_file()
    if settings.get("hypergen_adapter", "lora") != "lora":
        return [f"{folder}: a {settings['hypergen_adapter']} adapter is not servable by vLLM (it serves LoRA "
                "adapters only)"]
    config_file, weights = folder / ADAPTER_CONFIG, folder / "adapter_model.safetensors"
    missing = [path.name for path in (config_file, weights) if not path.is_file()]
    if missing:
        return [f"{folder}: lacks {' and '.join(missing)} (vLLM reads adapter_config.json and "
                "adapter_model.safetensors)"]
    config = read_json_object(config_file, "adapter config")
    model = _main_model_config(folder)
    architecture = ((model or {}).get("architectures") or [None])[0]
    accepted = VLLM_LORA_MODULES.get(architecture, LLAMA_STYLE_MODULES + GPT2_MODULES)
    problems = [f"{config_file}: {p}" for p in _config_problems(config, settings, accepted)]
    state = read_safetensors(weights, "LoRA adapter weights")
    problems += [f"{weights}: {p}" for p in _weight_problems(state, config.get("r"), config.get("target_modules"),
                                                             model, accepted)]
    return problems
