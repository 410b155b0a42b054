"""Export one task's generated parameters as an adapter folder, load it back, and predict with it.

Two kinds of folder, both written by ``hypergen adapt`` (atomically: into a temporary folder beside the target,
then renamed):

**LoRA** (peft's format, loadable with ``peft.PeftModel.from_pretrained(main_model, FOLDER)``)::

    FOLDER/adapter_config.json        a peft LoraConfig: peft_type LORA, r, lora_alpha, target_modules (a regex
                                      that matches exactly the adapted projections), task_type SEQ_2_SEQ_LM, ...
    FOLDER/adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r x d_in) and .lora_B.weight
                                      (d_out x r), e.g. base_model.model.encoder.block.0.layer.0.SelfAttention.q.*
                                      (peft drops the adapter name "default" from the saved keys)

**Prefix** (hypergen's own format)::

    FOLDER/adapter_config.json        {"hypergen_adapter": "prefix", "length", "num_layers", "num_decoder_layers",
                                      "num_heads", "d_kv", "d_model", "base_model_name_or_path",
                                      "fusion_in_decoder"}
    FOLDER/prefix.safetensors         "encoder.key", "encoder.value", "decoder.key", "decoder.value":
                                      num_layers x length x (num_heads * d_kv)

Both kinds may also hold:

* ``fusion.safetensors`` ("states": n_d x d_h, "mask": n_d): the hypernetwork encoder's output for the demos, when
  the run used fusion-in-decoder (the main decoder cross-attends to it). peft knows nothing of it, so peft alone
  reproduces only the LoRA part of such a run; ``hypergen predict`` uses both.
* ``hypergen_adapter.json``: the run's settings for prediction (kind, fusion_in_decoder, max_input_length,
  max_new_tokens, num_beams, dtype) and where the adapter came from (run, task). Without it (a LoRA folder from
  elsewhere) predict uses defaults and no fusion.
* ``base_model/``: when the run's main model is a ``tiny`` T5 (built from a config, so nothing names it), the frozen
  main model is saved here as a Hugging Face folder and ``base_model_name_or_path`` is its absolute path. If the
  adapter folder is moved, ``predict`` falls back to ``FOLDER/base_model``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .components.targets.lora import ATTENTIONS, LoraTarget, module_path
from .components.targets.prefix import PrefixTarget
from .data.demos import task_from_demos
from .data.tasks import Task
from .errors import HypergenError
from .io import atomic_folder, atomic_save_tensors, atomic_write_json, atomic_write_text
from .models.adapted import adapted_generate
from .models.hypernet import TaskParameters

ADAPTER_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "adapter_model.safetensors"
PREFIX_WEIGHTS = "prefix.safetensors"
FUSION_WEIGHTS = "fusion.safetensors"
SETTINGS = "hypergen_adapter.json"
BASE_MODEL_DIR = "base_model"
PEFT_PREFIX = "base_model.model."
DEFAULT_SETTINGS = {"fusion_in_decoder": False, "max_input_length": 512, "max_new_tokens": 128, "num_beams": 1,
                    "dtype": "float32"}

_PEFT_KEY = re.compile(r"base_model\.model\.(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\."
                       r"(SelfAttention|EncDecAttention)\.(q|k|v|o)\.lora_(A|B)\.weight")
_ATTENTION_OF = {name: (att, index) for att, (index, name) in ATTENTIONS.items()}


# ----------------------------------------------------------------------------------------------------- LoRA (peft)

def peft_target_modules(target: LoraTarget) -> str:
    """A regex (peft full-matches a string ``target_modules`` against module names) naming exactly the adapted
    projections, e.g. ``(?:encoder\\.block\\.\\d+\\.layer\\.0\\.SelfAttention|...)\\.(?:q|v)``."""
    stacks = []
    for side, att in target._combos():
        index, name = ATTENTIONS[att]
        stacks.append(rf"{side}\.block\.\d+\.layer\.{index}\.{name}")
    return rf"(?:{'|'.join(stacks)})\.(?:{'|'.join(target.targets)})"


def peft_lora_config(target: LoraTarget, base_model_name_or_path: str | None) -> dict[str, Any]:
    """The ``adapter_config.json`` of a LoRA adapter, in peft's LoraConfig fields."""
    return {
        "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model_name_or_path,
        "revision": None, "r": target.rank, "lora_alpha": target.alpha,
        "target_modules": peft_target_modules(target), "exclude_modules": None, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def peft_lora_state_dict(target: LoraTarget, main_model: nn.Module,
                         params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One task's LoRA ``params`` ({group: num_layers x r x width}) under peft's saved key names.

    ``lora_A.weight`` is the A slot of the layer (r x d_in); ``lora_B.weight`` is the transpose of the B slot
    (d_out x r), so peft computes ``lora_B(lora_A(x)) * lora_alpha / r``, exactly :class:`LoraTarget`'s update.
    """
    state = {}
    for side, att, projection, layer, _ in target.sites(main_model):
        group = f"{side}.{att}.{projection}"
        name = PEFT_PREFIX + module_path(side, layer, att, projection)
        state[f"{name}.lora_A.weight"] = params[f"{group}.A"][layer].detach().float().contiguous()
        state[f"{name}.lora_B.weight"] = params[f"{group}.B"][layer].detach().float().t().contiguous()
    return state


def _lora_from_peft(folder: Path, config: dict[str, Any],
                    main_model: nn.Module) -> tuple[LoraTarget, dict[str, torch.Tensor]]:
    """Rebuild a :class:`LoraTarget` and its parameters ({group: 1 x L x r x width}) from a peft LoRA folder,
    checking that it fits ``main_model``: every layer of each adapted projection, with matching widths."""
    config_file, weights = folder / ADAPTER_CONFIG, folder / LORA_WEIGHTS
    for key, supported in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False)):
        if config.get(key, supported) != supported:
            raise HypergenError(f"{config_file}: {key}={config[key]!r} is not supported (hypergen applies plain LoRA)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise HypergenError(f"{config_file}: rank_pattern/alpha_pattern are not supported")
    state = _load_tensors(weights)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise HypergenError(f"{config_file}: 'r' and 'lora_alpha' must be a positive integer and a number")
    found: dict[tuple[str, str, str], dict[int, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = _PEFT_KEY.fullmatch(key)
        if not match:
            raise HypergenError(f"{weights}: unexpected key {key!r}; expected peft LoRA keys of T5 attention "
                                "projections (base_model.model.<side>.block.<i>.layer.<j>.<Attention>.<q|k|v|o>."
                                "lora_<A|B>.weight)")
        side, layer, index, name, projection, which = match.groups()
        att, expected_index = _ATTENTION_OF[name]
        if int(index) != expected_index:
            raise HypergenError(f"{weights}: key {key!r} puts {name} at layer.{index}; T5 has it at "
                                f"layer.{expected_index}")
        found.setdefault((side, att, projection), {}).setdefault(int(layer), {})[which] = tensor
    if not found:
        raise HypergenError(f"{weights}: holds no LoRA weights")
    sides = sorted({k[0] for k in found}, key=("encoder", "decoder").index)
    attention = sorted({k[1] for k in found}, key=list(ATTENTIONS).index)
    targets = sorted({k[2] for k in found}, key="qkvo".index)
    try:
        target = LoraTarget(rank=rank, alpha=float(alpha), targets=targets, attention=attention, sides=sides)
    except ValueError as exc:
        raise HypergenError(f"{weights}: {exc}") from None
    expected = {(side, att, p) for side, att in target._combos() for p in target.targets}
    if set(found) != expected:
        raise HypergenError(f"{weights}: adapts {sorted(found)}, which is not every projection of "
                            f"{sorted(expected)}; hypergen needs the same projections on each side")
    config_shape = main_model.config
    layer_counts = {"encoder": config_shape.num_layers, "decoder": config_shape.num_decoder_layers}
    for (side, att, projection), layers in found.items():
        if sorted(layers) != list(range(layer_counts[side])):
            raise HypergenError(f"{weights}: has {side} layers {_ranges(sorted(layers))} of {att}-attention "
                                f"{projection}, but the main model has {layer_counts[side]} {side} layers "
                                "(an adapter from another main model?)")
    params: dict[str, list[torch.Tensor]] = {}
    for side, att, projection, layer, linear in target.sites(main_model):
        pair = found[(side, att, projection)][layer]
        name = module_path(side, layer, att, projection)
        if set(pair) != {"A", "B"}:
            raise HypergenError(f"{weights}: {name} lacks lora_{'B' if 'A' in pair else 'A'}.weight")
        a, b = pair["A"], pair["B"]
        want_a, want_b = (rank, linear.in_features), (linear.out_features, rank)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise HypergenError(f"{weights}: {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, but the "
                                f"main model needs {want_a} and {want_b} (an adapter from another main model?)")
        group = f"{side}.{att}.{projection}"
        params.setdefault(f"{group}.A", []).append(a)
        params.setdefault(f"{group}.B", []).append(b.t())
    return target, {g: torch.stack(v)[None] for g, v in params.items()}


def _ranges(values: list[int]) -> str:
    return f"{values[0]}..{values[-1]}" if values else "(none)"


# ------------------------------------------------------------------------------------------------------- prefix

def prefix_config(target: PrefixTarget, main_model: nn.Module, base_model_name_or_path: str | None,
                  fusion: bool) -> dict[str, Any]:
    config = main_model.config
    return {"hypergen_adapter": "prefix", "length": target.length, "encoder": target.encoder,
            "decoder": target.decoder, "num_layers": config.num_layers,
            "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads, "d_kv": config.d_kv,
            "d_model": config.d_model, "base_model_name_or_path": base_model_name_or_path,
            "fusion_in_decoder": fusion}


def _prefix_from_folder(folder: Path, config: dict[str, Any],
                        main_model: nn.Module) -> tuple[PrefixTarget, dict[str, torch.Tensor]]:
    config_file, weights = folder / ADAPTER_CONFIG, folder / PREFIX_WEIGHTS
    model_config = main_model.config
    for key in ("num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_model"):
        if key not in config:
            raise HypergenError(f"{config_file}: field {key!r} is missing")
        if config[key] != getattr(model_config, key):
            raise HypergenError(f"{config_file}: made for a main model with {key}={config[key]}, but this main model "
                                f"has {key}={getattr(model_config, key)} (an adapter from another main model?)")
    state = _load_tensors(weights)
    length = config.get("length")
    encoder, decoder = "encoder.key" in state, "decoder.key" in state
    target = PrefixTarget(length=length, encoder=encoder, decoder=decoder)
    groups = target.slot_groups(main_model)
    if not groups or set(state) != {g.name for g in groups}:
        raise HypergenError(f"{weights}: holds {sorted(state)}; expected encoder/decoder key/value prefixes")
    for group in groups:
        want = (group.num_layers, group.rows, group.width)
        if tuple(state[group.name].shape) != want:
            raise HypergenError(f"{weights}: {group.name} has shape {tuple(state[group.name].shape)}, but the main "
                                f"model needs {want} (an adapter from another main model?)")
    return target, {g.name: state[g.name][None] for g in groups}


# ------------------------------------------------------------------------------------------------------- folders

def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise HypergenError(f"{path}: not found; not an adapter folder written by `hypergen adapt` or peft")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise HypergenError(f"{path}: cannot read safetensors ({exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HypergenError(f"{path}: not found; not an adapter folder written by `hypergen adapt` or peft")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HypergenError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HypergenError(f"{path}: expected a JSON object")
    return data


def read_adapter_config(folder: str | Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(kind, adapter_config, settings)`` of an adapter folder; kind is "lora" or "prefix"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HypergenError(f"--adapter: {folder} is not a folder")
    config = _read_json(folder / ADAPTER_CONFIG)
    if config.get("peft_type") == "LORA":
        kind = "lora"
    elif config.get("hypergen_adapter") == "prefix":
        kind = "prefix"
    else:
        raise HypergenError(f"{folder / ADAPTER_CONFIG}: neither a peft LoRA config (peft_type 'LORA') nor a "
                            "hypergen prefix adapter (hypergen_adapter 'prefix')")
    settings = dict(DEFAULT_SETTINGS)
    if (folder / SETTINGS).is_file():
        settings.update(_read_json(folder / SETTINGS))
    if kind == "prefix":
        settings["fusion_in_decoder"] = bool(config.get("fusion_in_decoder", False))
    return kind, config, settings


def base_model_of(folder: str | Path) -> str:
    """The main model an adapter names (``base_model_name_or_path``), falling back to ``FOLDER/base_model``
    when the named local folder no longer exists (a moved adapter folder)."""
    folder = Path(folder)
    _, config, _ = read_adapter_config(folder)
    name = config.get("base_model_name_or_path")
    local = folder / BASE_MODEL_DIR
    if name and Path(name).expanduser().exists():
        return name
    if (local / "config.json").is_file():
        return str(local)
    if not name:
        raise HypergenError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path is not set; pass --base-model")
    return name


@dataclass
class Adapter:
    """A loaded adapter: its target (prepared on the main model) and one task's parameters (a batch of 1)."""

    folder: Path
    kind: str
    target: Any
    params: dict[str, torch.Tensor]          # {group: 1 x L x rows x width}
    fusion_states: torch.Tensor | None = None  # 1 x n_d x d_h
    fusion_mask: torch.Tensor | None = None    # 1 x n_d
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fusion(self) -> bool:
        return self.fusion_states is not None

    def per_example(self, batch: int) -> TaskParameters:
        """The parameters repeated for ``batch`` examples, as the main model's adapted forward expects them."""
        device = next(iter(self.params.values())).device
        states = self.fusion_states if self.fusion else torch.zeros(1, 0, 1, device=device)  # unused without fusion
        mask = self.fusion_mask if self.fusion else torch.zeros(1, 0, dtype=torch.long, device=device)
        index = torch.zeros(batch, dtype=torch.long, device=states.device)
        return TaskParameters(self.params, states, mask, None).select(index)  # type: ignore[arg-type]

    def to(self, device) -> "Adapter":
        self.params = {k: v.to(device) for k, v in self.params.items()}
        if self.fusion:
            self.fusion_states, self.fusion_mask = self.fusion_states.to(device), self.fusion_mask.to(device)
        return self

    @torch.no_grad()
    def generate(self, main_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, num_beams: int = 1) -> torch.Tensor:
        return adapted_generate(main_model, self.target, self.per_example(input_ids.shape[0]), input_ids,
                                attention_mask, self.fusion, max_new_tokens, num_beams)


def load_adapter(folder: str | Path, main_model: nn.Module) -> Adapter:
    """Load an adapter folder for ``main_model`` (and prepare its target on it).

    LoRA folders are read from peft's safetensors with hypergen's own :class:`LoraTarget` (no peft needed). An
    adapter made for another main model (other layer counts or widths) raises a one-line :class:`HypergenError`
    naming the file and the mismatch.
    """
    folder = Path(folder)
    kind, config, settings = read_adapter_config(folder)
    if kind == "lora":
        target, params = _lora_from_peft(folder, config, main_model)
    else:
        target, params = _prefix_from_folder(folder, config, main_model)
    states = mask = None
    if settings.get("fusion_in_decoder"):
        fusion_file = folder / FUSION_WEIGHTS
        fusion = _load_tensors(fusion_file)
        if set(fusion) != {"states", "mask"} or fusion["states"].dim() != 2:
            raise HypergenError(f"{fusion_file}: expected 'states' (n_d x d_h) and 'mask' (n_d)")
        if fusion["states"].shape[1] != main_model.config.d_model:
            raise HypergenError(f"{fusion_file}: states have width {fusion['states'].shape[1]}, but the main model "
                                f"has d_model={main_model.config.d_model} (an adapter from another main model?)")
        states, mask = fusion["states"][None], fusion["mask"][None]
    target.prepare(main_model)
    device = next(main_model.parameters()).device
    dtype = next(main_model.parameters()).dtype
    adapter = Adapter(folder, kind, target, {k: v.to(dtype) for k, v in params.items()},
                      None if states is None else states.to(dtype), mask, settings)
    return adapter.to(device)


def write_adapter(folder: Path, target, params: dict[str, torch.Tensor], main_model: nn.Module,
                  base_model_name_or_path: str | None, fusion: tuple[torch.Tensor, torch.Tensor] | None = None,
                  settings: dict[str, Any] | None = None) -> None:
    """Write one task's ``params`` ({group: num_layers x rows x width}) into ``folder`` (created if needed).

    ``fusion``: (states n_d x d_h, mask n_d) of the hypernetwork encoder, for runs with fusion-in-decoder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(target, LoraTarget):
        kind = "lora"
        atomic_save_tensors(folder / LORA_WEIGHTS, peft_lora_state_dict(target, main_model, params),
                            metadata={"format": "pt"})
        atomic_write_json(folder / ADAPTER_CONFIG, peft_lora_config(target, base_model_name_or_path))
    elif isinstance(target, PrefixTarget):
        kind = "prefix"
        groups = [g.name for g in target.slot_groups(main_model)]
        atomic_save_tensors(folder / PREFIX_WEIGHTS, {g: params[g].detach().float() for g in groups})
        atomic_write_json(folder / ADAPTER_CONFIG,
                          prefix_config(target, main_model, base_model_name_or_path, fusion is not None))
    else:
        raise HypergenError(f"peft target {type(target).__name__} cannot be exported as an adapter "
                            "(supported: lora, prefix)")
    if fusion is not None:
        states, mask = fusion
        atomic_save_tensors(folder / FUSION_WEIGHTS, {"states": states.detach().float(), "mask": mask.detach()})
    meta = {"hypergen_adapter": kind, **DEFAULT_SETTINGS, **(settings or {}), "fusion_in_decoder": fusion is not None}
    atomic_write_json(folder / SETTINGS, meta)


# ------------------------------------------------------------------------------------------ adapt: run -> adapter

def read_jsonl(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of ``path``; errors name the file and the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HypergenError(f"{path}: {kind} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HypergenError(f"{path}: cannot read {kind} ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise HypergenError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None


def read_demos_file(path: str | Path) -> Task:
    """A task from a JSONL demos file: at most one ``{"definition": ...}`` line and ``{"input", "output"}`` pairs
    (``output`` a string or a list of strings). The pairs become the task's positive examples."""
    path = Path(path)
    lines = ((f"line {number}", item) for number, item in read_jsonl(path, "demos file"))
    return task_from_demos(lines, str(path), path.stem)


def demos_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@torch.no_grad()
def generate_task_parameters(assembled, task: Task) -> tuple[TaskParameters, str]:
    """One hypernetwork forward pass over ``task``'s demos, in the run's demo format. Returns the parameters
    (a batch of one task) and the demos text."""
    method = assembled.method
    method.eval()
    text = assembled.collator.demos(task)
    ids, mask = assembled.collator.encode_demos([task])
    return method.module(ids.to(assembled.device), mask.to(assembled.device)).detach(), text


def export_adapter(assembled, task: Task, out: str | Path, run_dir: str | Path | None = None,
                   overwrite: bool = False, parameters: TaskParameters | None = None) -> Path:
    """Generate ``task``'s parameters with a loaded run and write them to ``out`` atomically (a temporary folder
    beside ``out``, then a rename). A ``tiny`` main model is saved into ``out/base_model``. ``parameters``: the
    task's parameters (a batch of one) when they were already generated, instead of a new pass."""
    from .models.main import save_main_model

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise HypergenError(f"--out: {out} already exists; pass --overwrite or choose another folder")
    recipe, method = assembled.recipe, assembled.method
    if parameters is None:
        task_params, text = generate_task_parameters(assembled, task)
    else:
        task_params, text = parameters, assembled.collator.demos(task)
    params = {k: v[0] for k, v in task_params.params.items()}
    fusion = (task_params.encoder_states[0], task_params.encoder_mask[0]) if method.fusion else None
    final = out.resolve()
    if recipe.main_model.tiny is not None:
        base = str(final / BASE_MODEL_DIR)
    else:
        name = recipe.main_model.name_or_path
        base = str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name
    settings = {"max_input_length": recipe.data.max_input_length,
                "max_new_tokens": recipe.evaluation.max_new_tokens, "num_beams": recipe.evaluation.num_beams,
                "dtype": recipe.main_model.dtype, "run": str(Path(run_dir).resolve()) if run_dir else None,
                "task": task.name, "demos_sha256": demos_digest(text), "peft": recipe.peft.model_dump()}
    with atomic_folder(final) as tmp:
        write_adapter(tmp, method.target, params, method.main_model, base, fusion, settings)
        if recipe.main_model.tiny is not None:
            save_main_model(method.main_model, assembled.tokenizer, tmp / BASE_MODEL_DIR)
    return out


# --------------------------------------------------------------------------------------------------- predict

def read_queries(path: str | Path) -> list[str]:
    """The ``input`` of each line of a JSONL file (``{"input": text}``, other keys ignored)."""
    path = Path(path)
    queries = []
    for number, item in read_jsonl(path, "input file"):
        if not isinstance(item, dict) or not isinstance(item.get("input"), str):
            raise HypergenError(f"{path}: line {number}: expected an object with a string 'input'")
        queries.append(item["input"])
    if not queries:
        raise HypergenError(f"{path}: no queries; expected lines {{\"input\": ...}}")
    return queries


def predict(adapter: Adapter, main_model: nn.Module, tokenizer, inputs: list[str], batch_size: int = 16,
            max_new_tokens: int | None = None, num_beams: int | None = None, max_input_length: int | None = None,
            progress: bool = True) -> list[str]:
    """Decode every input with the adapter applied, in batches (the same tokenization as evaluation)."""
    from tqdm.auto import tqdm

    settings = adapter.settings
    max_new_tokens = max_new_tokens or settings.get("max_new_tokens", 128)
    num_beams = num_beams or settings.get("num_beams", 1)
    max_input_length = max_input_length or settings.get("max_input_length", 512)
    device = next(main_model.parameters()).device
    predictions: list[str] = []
    with tqdm(total=len(inputs), desc="predict", disable=not progress, leave=False) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            enc = tokenizer(chunk, max_length=max_input_length, truncation=True, padding=True, return_tensors="pt")
            output = adapter.generate(main_model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                      max_new_tokens, num_beams)
            predictions.extend(text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True))
            bar.update(len(chunk))
    return predictions


def write_predictions(path: str | Path | None, inputs: list[str], predictions: list[str]) -> str:
    text = "".join(json.dumps({"input": x, "prediction": y}) + "\n" for x, y in zip(inputs, predictions))
    if path is not None:
        atomic_write_text(Path(path), text)
    return text
