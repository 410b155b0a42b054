"""A recipe assembled: the main model loaded (and frozen), the components built from their registered names, the
method (hypernetwork or fine-tuning) and the collator that feeds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..components.build import make_component
from ..data.chat import stop_at_end_of_turn
from ..data.collate import Collator
from ..errors import RecipeError
from ..models.backbones import is_causal
from ..models.hypernet import HyperNetwork
from ..models.main import DTYPES, load_main_model
from ..pretraining.chunks import PretrainCollator
from ..recipe import FinetuneRecipe, HypernetRecipe, PretrainRecipe, Recipe
from ..training.methods import FinetuneMethod, HypernetMethod
from .devices import resolve_device


@dataclass
class Assembled:
    recipe: Recipe
    method: Any
    tokenizer: Any
    collator: Collator | PretrainCollator
    device: torch.device


def assemble(recipe: Recipe, device: torch.device | None = None) -> Assembled:
    """Build the method a recipe describes (main model loaded and frozen; hypernetwork built from it)."""
    device = device or resolve_device(recipe.training.device)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    if isinstance(recipe, FinetuneRecipe):
        main_model, tokenizer = load_main_model(recipe.main_model, device)
        method = FinetuneMethod(main_model, recipe.few_shot, recipe.evaluation, recipe.train_demos_fraction)
    else:  # in fp32 on the CPU first: the hypernetwork starts from the full-precision weights
        main_model, tokenizer = load_main_model(recipe.main_model, "cpu", dtype=torch.float32)
        method = build_hypernet_method(recipe, main_model, device)
    collator = (PretrainCollator(tokenizer) if isinstance(recipe, PretrainRecipe)
                else Collator(tokenizer, recipe.data, causal=is_causal(main_model)))
    stop_at_end_of_turn(main_model, collator)  # a chat prompt's answers end with the template's end-of-turn token
    return Assembled(recipe, method, tokenizer, collator, device)


def build_hypernet_method(recipe: HypernetRecipe, main_model, device) -> HypernetMethod:
    """``main_model`` in fp32: the hypernetwork copies its weights, then it goes to ``device`` in
    ``main_model.dtype`` (bf16 there rounds the frozen model only, never the hypernetwork's starting point)."""
    hyper = recipe.hypernetwork
    target = make_component("peft_targets", recipe.peft, "peft")
    generator = make_component("generators", hyper.generator, "hypernetwork.generator")
    projector = make_component("projectors", hyper.projector, "hypernetwork.projector")
    regularizers = [make_component("regularizers", spec, f"hypernetwork.regularizers.{i}")
                    for i, spec in enumerate(hyper.regularizers)]
    groups = target.slot_groups(main_model)
    check_target_generates(recipe, groups)
    try:
        torch.manual_seed(recipe.training.seed)
        hypernet = HyperNetwork(main_model, generator, projector, groups, hyper.decoder_layers, hyper.init_from_main,
                                fusion_gate=hyper.fusion_in_decoder and is_causal(main_model))
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    except RecipeError as exc:
        message = str(exc)
        if message.startswith(("projector:", "generator:")):
            message = f"hypernetwork.{message}"
        raise RecipeError(message) from None
    main_model.to(device=device, dtype=DTYPES[recipe.main_model.dtype])
    if hyper.fusion_in_decoder and not generator.reads_demos:
        raise RecipeError(f"hypernetwork.fusion_in_decoder: the generator {hyper.generator.name!r} reads no demos, "
                          "so there are no encoded demos to fuse; set it to false")
    if hyper.fusion_in_decoder and not hypernet.backbone.supports_fusion:
        raise RecipeError(f"hypernetwork.fusion_in_decoder: {type(main_model).__name__} has no cross-attention to fuse "
                          "the demos into; set it to false")
    target.prepare(main_model)
    return HypernetMethod(main_model, hypernet.to(device), target, regularizers, hyper.fusion_in_decoder,
                          recipe.evaluation, recipe.data.demos_in_input)


def check_target_generates(recipe: HypernetRecipe, groups) -> None:
    """Refuse a PEFT target that gives the hypernetwork nothing to generate.

    A prefix of length 0 (or LoRA of rank 0), or one with encoder and decoder both off, leaves the main model
    unchanged: training would fit nothing. The target classes accept it (a zero-length prefix is a no-op), but a
    hypernetwork recipe needs at least one generated row."""
    if any(g.rows > 0 and g.num_layers > 0 and g.width > 0 for g in groups):
        return
    params = recipe.peft.params
    for key in ("length", "rank", "r"):
        if params.get(key) == 0:
            raise RecipeError(f"peft.{key}: 0 leaves the hypernetwork nothing to generate; expected an integer >= 1")
    sides = [k for k in ("encoder", "decoder") if params.get(k) is False]
    if len(sides) == 2:
        raise RecipeError("peft.encoder, peft.decoder: both false leaves the hypernetwork nothing to generate; "
                          "expected at least one of them true")
    raise RecipeError(f"peft: {recipe.peft.name!r} with {params} gives the hypernetwork nothing to generate")
