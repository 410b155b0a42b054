"""A fresh hypernetwork starts as the frozen model: before any training, the main model with its generated LoRA gives
the frozen model's logits (LoRA's B half generated as exactly zero, as peft starts a new LoRA), for every generator
and main-model family; a fresh prefix only rescales attention (its values are generated as zero); and the
projector's output layer trains at lr / fan_in so that the generated weights move like a peft adapter's."""

from __future__ import annotations

import pytest
import torch

import hypergen.components  # noqa: F401 - registers the built-in components
from hypergen.models.adapted import adapted_forward, main_forward
from hypergen.recipe import Training, parse_recipe
from hypergen.runs.assembly import build_hypernet_method
from hypergen.models.main import load_main_model
from hypergen.training.optim import make_optimizer
from tests.models.test_families import batch  # the harness's batch: 2 tasks' demos (one padded), 4 queries

FAMILIES = {
    "t5": ({"architecture": "t5", "num_layers": 2, "num_decoder_layers": 2}, ["q", "v", "o"]),
    "llama": ({"architecture": "llama", "num_layers": 3, "num_key_value_heads": 2},
              ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
    "qwen2": ({"architecture": "qwen2", "num_layers": 3, "num_key_value_heads": 2}, ["q_proj", "k_proj", "gate_proj"]),
}
GENERATORS = ["autoregressive", "non_autoregressive", "learned_states"]


def build(family: str, generator: str, peft: dict):
    tiny, _ = FAMILIES[family]
    recipe = parse_recipe({
        "main_model": {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "seed": 1, **tiny}},
        "hypernetwork": {"decoder_layers": 1, "fusion_in_decoder": False, "generator": {"name": generator}},
        "peft": peft,
        "data": {"source": "embedded", "path": "unused"},
        "training": {"optimizer": "adamw", "lr": 1e-3, "seed": 0},
    })
    main_model, _ = load_main_model(recipe.main_model)
    return build_hypernet_method(recipe, main_model, torch.device("cpu")), recipe


def adapted_and_frozen(method):
    demo_ids, demo_mask, task_index, input_ids, mask, labels = batch()
    with torch.no_grad():
        per_example = method.module(demo_ids, demo_mask).select(task_index)
        adapted = adapted_forward(method.main_model, method.target, per_example, input_ids, mask, labels, False)
        frozen = main_forward(method.main_model, input_ids, mask, labels)
    return per_example, adapted, frozen


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fresh_lora_hypernetwork_leaves_the_frozen_model_unchanged(family, generator):
    method, _ = build(family, generator, {"name": "lora", "rank": 4, "targets": FAMILIES[family][1]})
    per_example, adapted, frozen = adapted_and_frozen(method)
    for name, value in per_example.params.items():
        if name.endswith(".B"):
            assert torch.count_nonzero(value) == 0, name
        else:  # the A half is a real, task-dependent start (as peft's random A)
            assert value.abs().max() > 1e-3, name
    torch.testing.assert_close(adapted.logits, frozen.logits, rtol=0, atol=1e-6)
    assert abs(adapted.loss.item() - frozen.loss.item()) < 1e-6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_step_moves_the_lora_off_zero_and_the_model_off_frozen(family):
    """B = 0 must not freeze the adapter: its heads get gradients through A, as peft's B does."""
    method, recipe = build(family, "autoregressive", {"name": "lora", "rank": 4, "targets": FAMILIES[family][1]})
    demo_ids, demo_mask, task_index, input_ids, mask, labels = batch()
    optimizer = make_optimizer(method.module.parameters(), recipe.training)
    per_example = method.module(demo_ids, demo_mask).select(task_index)
    adapted_forward(method.main_model, method.target, per_example, input_ids, mask, labels, False).loss.backward()
    optimizer.step()
    per_example, adapted, frozen = adapted_and_frozen(method)
    assert all(torch.count_nonzero(v) > 0 for k, v in per_example.params.items() if k.endswith(".B"))
    assert (adapted.logits - frozen.logits).abs().max() > 1e-5


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_fresh_prefix_has_zero_values_so_attention_is_only_rescaled(family):
    """With zero prefix values, a layer's attention output is the frozen one times Z / (Z + Z_prefix): never a new
    direction, but not the identity either (a softmax has no exact off switch); the keys start random so that the
    values' gradients differ by position."""
    method, _ = build(family, "autoregressive", {"name": "prefix", "length": 3})
    per_example, adapted, frozen = adapted_and_frozen(method)
    values = [v for k, v in per_example.params.items() if k.endswith(".value")]
    keys = [v for k, v in per_example.params.items() if k.endswith(".key")]
    assert values and all(torch.count_nonzero(v) == 0 for v in values)
    assert all(k.abs().max() > 1e-3 for k in keys)
    assert torch.isfinite(adapted.logits).all()
    assert not torch.allclose(adapted.logits, frozen.logits)  # the rescaling is real: measured in real_model.md


def test_output_layer_learning_rate_is_scaled_by_its_fan_in():
    method, recipe = build("llama", "autoregressive", {"name": "lora", "rank": 4, "targets": ["q_proj"]})
    optimizer = make_optimizer(method.module.parameters(), recipe.training)
    by_id = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    heads = method.module.projector.heads
    for head in heads.values():
        assert by_id[id(head.second_weight)] == pytest.approx(recipe.training.lr / head.hidden)
        assert by_id[id(head.first.weight)] == recipe.training.lr
    assert optimizer.param_groups[0]["lr"] == recipe.training.lr  # the unscaled group is the one logged
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(method.module.parameters()))


def test_output_lr_scale_can_be_set_and_is_checked():
    cfg = Training(optimizer="adamw", lr=1e-3)
    from hypergen.components.projectors import LayerwiseMLPProjector
    from hypergen.errors import RecipeError

    with pytest.raises(RecipeError, match="output_lr_scale"):
        LayerwiseMLPProjector(output_lr_scale=0)
    with pytest.raises(RecipeError, match="output_lr_scale"):
        LayerwiseMLPProjector(output_lr_scale="fanin")
    from hypergen.components.base import SlotGroup

    prefix_heads = LayerwiseMLPProjector()  # "auto": prefixes keep the full rate
    prefix_heads.build(16, [SlotGroup("layers.value", "layers", 2, 4, 8, zero_at_init=True)], 1)
    assert [g["lr"] for g in make_optimizer(prefix_heads.parameters(), cfg).param_groups] == [1e-3]

    projector = LayerwiseMLPProjector(output_lr_scale=1)
    projector.build(16, [SlotGroup("layers.q_proj.B", "layers", 2, 4, 8, zero_at_init=True)], 1)
    optimizer = make_optimizer(projector.parameters(), cfg)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 1e-3
    head = next(iter(projector.heads.values()))
    assert torch.count_nonzero(head.second_weight) == 0 and torch.count_nonzero(head.second_bias) == 0
