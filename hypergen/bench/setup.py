"""What ``hypergen bench`` measures on: the frozen main model, the held-out tasks and the recipes of the benched
hypernetworks, each built through :func:`hypergen.runs.build_hypernet_method` as ``hypergen train`` builds it.

Two reference recipes are always benched, labelled by their own names: ``HART`` (the ``autoregressive`` generator
with ``local_consistency``) and ``HyperTuning`` (``non_autoregressive``, no regularizer). With ``--size`` they are
copies of the tiny / T5-Large recipe shapes on a random-weight :class:`~hypergen.recipe.TinyT5` main model; with
``--run`` they are copies of the run's recipe with the generator and regularizers swapped, untrained, and the run's
own trained hypernetwork is benched first, labelled by its registered component names (:func:`recipe_label`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data.collate import Collator
from ..data.tasks import Task
from ..errors import HypergenError
from ..models.backbones import is_causal
from ..models.main import load_main_model
from ..recipe.builtin import builtin_recipe
from ..recipe import FinetuneRecipe, HypernetRecipe, parse_recipe, read_recipe_dict
from ..runs.assembly import build_hypernet_method
from ..runs.folder import load_final, read_run
from ..runs.tasks import load_tasks
from ..runs.devices import resolve_device
from ..training.methods import HypernetMethod

# label -> the hypernetwork section's generator and regularizers (everything else comes from the base recipe)
REFERENCES: dict[str, dict[str, Any]] = {
    "HART": {"generator": {"name": "autoregressive"}, "regularizers": [{"name": "local_consistency", "alpha": 1.0}]},
    "HyperTuning": {"generator": {"name": "non_autoregressive"}, "regularizers": []},
}
DEPTH_SCALING = "HART"  # the reference whose generator's cost is measured against main-model depth
REPOSITORY = Path(__file__).resolve().parents[2]  # where a built-in recipe's relative data path points from


@dataclass
class SizePreset:
    """A benchmark size: the recipe shape (a TinyT5 main model with random weights, no download) and the
    measurement settings."""

    name: str
    t5: dict[str, Any]  # hypergen.recipe.TinyT5 fields (its architecture: a T5 or a causal LM)
    data: dict[str, Any]  # hypergen.recipe.Data fields (the embedded tasks)
    decoder_layers: int
    prefix_length: int
    fusion: bool = True
    throughput_tasks: int = 4
    throughput_queries: int = 8
    throughput_steps: int = 3
    latency_warmup: int = 2
    recompute_max_depth: int = 48
    depth_repeats: int = 3
    lr_lora: float = 1e-3
    lr_prefix: float = 1e-2
    max_new_tokens: int = 12
    ft_tasks: int = 2  # without --run: tasks fine-tuned (from scratch, S steps each) for the step timings
    recipe: str | None = None  # a built-in recipe whose real main model, target and data the size benches instead
    query_tasks: int = 2  # tasks whose queries are timed in context and with their adapter (hypergen.bench.queries)
    query_batch: int = 16
    query_new_tokens: int = 12


SIZES: dict[str, SizePreset] = {
    # the main model of recipes/tiny_finetune.json (which tiny_hart.json / tiny_hypertuning.json freeze)
    "tiny": SizePreset(
        "tiny",
        t5=dict(d_model=128, d_kv=32, d_ff=256, num_layers=3, num_decoder_layers=2, num_heads=4),
        data=dict(num_positive=4, max_demo_length=64, max_input_length=32, max_target_length=16,
                  include_definition=False, demo_style="compact"),
        decoder_layers=2, prefix_length=8),
    # T5-Large's widths as in t5-v1_1 / lm-adapt: gated-gelu, d_ff 2816, T5's vocabulary of 32128 rows (the ByT5
    # tokenizer's ids use the first 384). t5-v1_1 unties the LM head (783M parameters); transformers 5's T5Config
    # always ties it, so this model has 750M parameters: the same compute, one 32128 x 1024 matrix less memory.
    "t5-large": SizePreset(
        "t5-large",
        t5=dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16,
                vocab_size=32128),
        data=dict(num_positive=4, max_demo_length=256, max_input_length=64, max_target_length=16,
                  include_definition=True, demo_style="sni"),
        decoder_layers=8, prefix_length=32, throughput_tasks=1, throughput_queries=2, throughput_steps=1, ft_tasks=1,
        latency_warmup=1, recompute_max_depth=24, depth_repeats=2, lr_lora=1e-4, lr_prefix=1e-3),
    # the shape of recipes/tiny_finetune_llama.json: a tiny random Llama (no fusion-in-decoder: no cross-attention)
    "tiny-llama": SizePreset(
        "tiny-llama",
        t5=dict(architecture="llama", d_model=64, d_kv=16, d_ff=128, num_layers=4, num_heads=4, num_key_value_heads=2),
        data=dict(num_positive=4, max_demo_length=64, max_input_length=32, max_target_length=16,
                  include_definition=False, demo_style="compact"),
        decoder_layers=2, prefix_length=8, fusion=False),
    # the real model (issue 28): SmolLM2-135M-Instruct as recipes smollm2_*_sni.json use it (LoRA r=8 on q/v, k=4,
    # sni-mini's Def+2Pos demos, chat prompt); the HART step at the recipe's batch (2 tasks x 4 queries)
    "smollm2": SizePreset(
        "smollm2", t5={}, data={}, decoder_layers=4, prefix_length=8, fusion=False, recipe="smollm2_hart_sni",
        throughput_tasks=2, throughput_queries=4, throughput_steps=2, latency_warmup=1, recompute_max_depth=24,
        depth_repeats=1, lr_lora=1e-3, ft_tasks=1, query_new_tokens=16),
}


@dataclass
class BenchConfig:
    run_dir: str | None = None
    size: str = "tiny"
    tasks: int = 8
    steps: int = 20
    depths: tuple[int, ...] = (6, 12, 24, 48)
    eval_every: int = 5
    eval_instances: int = 8
    ft_tasks: int | None = None  # tasks fine-tuned for the step timings without --run (default: min(tasks, 2))
    device: str = "auto"
    threads: int | None = None  # torch CPU threads, set after loading (a run's recipe may set its own)
    seed: int = 0
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class Setup:
    """The shared frozen main model and data, and the recipes of the hypernetworks to bench, by label (in report
    order; ``headline`` is the one the headline ratio divides by). ``trained`` holds the run's loaded method."""

    label: str
    main: nn.Module
    tokenizer: Any
    collator: Collator
    tasks: list[Task]
    device: torch.device
    preset: SizePreset
    recipes: dict[str, HypernetRecipe]
    headline: str
    trained: dict[str, HypernetMethod] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def max_new_tokens(self) -> int:
        return self.recipes[self.headline].evaluation.max_new_tokens

    def build_method(self, label: str) -> HypernetMethod:
        """The hypernetwork ``label`` on the shared main model: the run's trained one, or built from its recipe."""
        if label in self.trained:
            return self.trained[label]
        return build_hypernet_method(self.recipes[label], self.main, self.device)


def recipe_label(recipe: HypernetRecipe) -> str:
    """A hypernetwork's registered component names: its generator, then its regularizers, joined by "+"."""
    hyper = recipe.hypernetwork
    return "+".join([hyper.generator.name] + [spec.name for spec in hyper.regularizers])


def reference_recipes(base: HypernetRecipe) -> dict[str, HypernetRecipe]:
    """``base`` with each reference's generator and regularizers (main model, target, data, seed kept)."""
    data = base.model_dump(mode="json")
    recipes = {}
    for label, components in REFERENCES.items():
        variant = copy.deepcopy(data)
        variant["hypernetwork"].update(copy.deepcopy(components))
        recipes[label] = parse_recipe(variant, f"bench's {label} recipe")
    return recipes


def size_recipe(preset: SizePreset, config: BenchConfig) -> HypernetRecipe:
    """The recipe shape of ``preset`` (the HART reference's components), on the embedded tasks; or the preset's
    built-in ``recipe`` (a real main model, its data folder found from the working directory or the repository)."""
    if preset.recipe:
        data = read_recipe_dict(builtin_recipe(preset.recipe))
        path = Path(data["data"]["path"])
        if not path.is_absolute() and not path.is_dir() and (REPOSITORY / path).is_dir():
            data["data"]["path"] = str(REPOSITORY / path)
        data["training"].update(seed=config.seed, device=config.device)
        data["hypernetwork"].update(copy.deepcopy(REFERENCES["HART"]))
        return parse_recipe(data, f"bench --size {preset.name} ({preset.recipe})")
    return parse_recipe({
        "description": f"hypergen bench --size {preset.name}: random-weight TinyT5 main model",
        "main_model": {"tiny": {**preset.t5, "seed": config.seed}},
        "hypernetwork": {"decoder_layers": preset.decoder_layers, "fusion_in_decoder": preset.fusion,
                         **REFERENCES["HART"]},
        "peft": {"name": "prefix", "length": preset.prefix_length},
        "data": {"source": "embedded", **preset.data},
        "training": {"seed": config.seed, "device": config.device},
        "evaluation": {"max_new_tokens": preset.max_new_tokens},
    }, f"bench --size {preset.name}")


def build_setup(config: BenchConfig) -> Setup:
    """The main model, tokenizer, tasks and hypernetwork recipes of a ``--size`` preset or of a trained ``--run``."""
    if config.run_dir is not None:
        return _run_setup(config)
    if config.size not in SIZES:
        raise HypergenError(f"--size: expected one of {', '.join(SIZES)}, got {config.size!r}")
    preset = SIZES[config.size]
    device = resolve_device(config.device, "--device")
    base = size_recipe(preset, config)
    main, tokenizer = load_main_model(base.main_model, device)
    notes = ([f"the real {base.main_model.name_or_path} of the built-in {preset.recipe} recipe (its target, data "
              "and prompt); HART and HyperTuning untrained (latency does not depend on the weights)"]
             if preset.recipe else ["random weights (no download); the ByT5 byte-level tokenizer supplies token ids"])
    return Setup(preset.name, main, tokenizer, Collator(tokenizer, base.data, causal=is_causal(main)),
                 load_tasks(base, "test", tokenizer=tokenizer), device, preset, reference_recipes(base), "HART",
                 notes=notes)


def _run_setup(config: BenchConfig) -> Setup:
    run = Path(config.run_dir)
    if not run.is_dir():
        raise HypergenError(f"--run: {run} does not exist")
    recipe = read_run(run)
    if isinstance(recipe, FinetuneRecipe):
        raise HypergenError(f"--run: {run} is a fine-tuning run; bench needs a trained hypernetwork run")
    device = None if config.device == "auto" else resolve_device(config.device, "--device")
    assembled = load_final(run, device)
    method: HypernetMethod = assembled.method
    model_config = method.main_model.config
    if getattr(model_config, "is_encoder_decoder", False):
        preset = copy.deepcopy(SIZES["tiny" if model_config.d_model <= 512 else "t5-large"])
    else:
        preset = copy.deepcopy(SIZES["tiny-llama"])
    if recipe.peft.name.startswith("prefix"):
        preset.prefix_length = recipe.peft.params.get("length", preset.prefix_length)
    label = recipe_label(recipe)
    if label in REFERENCES:  # a plugin generator registered under a reference's label
        label += " (run)"
    recipes = {label: recipe, **reference_recipes(recipe)}
    note = (f"the run's trained {label} hypernetwork; {' and '.join(REFERENCES)} are built untrained from the run's "
            "recipe with their own generator and regularizers (latency does not depend on the weights)")
    return Setup(run.name, method.main_model, assembled.tokenizer, assembled.collator,
                 load_tasks(recipe, "test", tokenizer=assembled.tokenizer), assembled.device, preset, recipes, label,
                 trained={label: method}, notes=[note])


def pick_tasks(tasks: list[Task], count: int) -> list[Task]:
    """``count`` held-out tasks with demos, spread over the list (held-out lists are often grouped by family)."""
    usable = [t for t in tasks if t.positives or t.instances]
    if not usable:
        raise HypergenError("bench: no held-out task has demos")
    if count <= len(usable):
        return [usable[i * len(usable) // count] for i in range(count)]
    return [usable[i % len(usable)] for i in range(count)]


def distinct(tasks: list[Task]) -> list[Task]:
    return list({task.name: task for task in tasks}.values())
