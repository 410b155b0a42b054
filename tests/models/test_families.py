"""One harness over family x target x generator (in the spirit of peft's testing_common.py): every registered
built-in family (tiny T5, Llama, Qwen2, Mistral, Gemma 3, GPT-2) with prefixes and LoRA, read by HART
(``autoregressive``) and HyperTuning (``non_autoregressive``).

For each: a zero-length prefix and a zero LoRA leave the logits unchanged, and so does a fresh LoRA hypernetwork
(B generated as zero); prefixed attention equals attention over the concatenated keys and values, computed by hand
from what the model passes its attention (Gemma 3: its query scaling, soft-cap and sliding-window mask); cached
generation equals uncached; an exported LoRA loads in peft with every key and gives hypergen's logits; a few
training steps lower the loss. A new family is one row of ``FAMILIES``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AttentionInterface

import hypergen.components  # noqa: F401 - registers the built-in components
from hypergen.components.targets import prefix as prefix_module
from hypergen.components.targets.lora import LoraTarget
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.errors import HypergenError
from hypergen.models.adapted import adapted_forward, main_forward
from hypergen.models.backbones.causal import left_align
from hypergen.models.families import families, family_of
from hypergen.models.main import load_main_model
from hypergen.recipe import parse_recipe
from hypergen.runs.assembly import build_hypernet_method
from hypergen.training.optim import make_optimizer

# family row: (tiny main model, LoRA targets the harness adapts: module names and roles)
FAMILIES = {
    "t5": ({"architecture": "t5", "num_layers": 2, "num_decoder_layers": 2}, ["q", "v", "o"]),
    "llama": ({"architecture": "llama", "num_key_value_heads": 2}, ["q_proj", "v_proj", "mlp.out"]),
    "qwen2": ({"architecture": "qwen2", "num_key_value_heads": 2}, ["attn.k", "gate_proj"]),
    "mistral": ({"architecture": "mistral", "num_key_value_heads": 2}, ["q_proj", "up_proj"]),
    "gemma3": ({"architecture": "gemma3", "num_key_value_heads": 2, "num_layers": 3}, ["q_proj", "v_proj", "o_proj"]),
    "gpt2": ({"architecture": "gpt2"}, ["c_attn", "c_proj", "c_fc"]),
}
GENERATORS = ["autoregressive", "non_autoregressive"]
TARGETS = ["prefix", "lora"]


def peft_spec(family: str, target: str, length: int = 3) -> dict:
    if target == "prefix":
        return {"name": "prefix", "length": length}
    return {"name": "lora", "rank": 2, "targets": FAMILIES[family][1]}


def recipe_of(family: str, generator: str, peft: dict, lr: float = 1e-3):
    tiny, _ = FAMILIES[family]
    return parse_recipe({
        "main_model": {"tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "num_layers": 2, "seed": 1,
                                **tiny}},
        "hypernetwork": {"decoder_layers": 1, "fusion_in_decoder": False, "generator": {"name": generator}},
        "peft": peft,
        "data": {"source": "embedded", "path": "unused"},
        "training": {"optimizer": "adamw", "lr": lr, "seed": 0},
    })


def main_model_of(family: str):
    return load_main_model(recipe_of(family, "autoregressive", peft_spec(family, "lora")).main_model)[0]


def batch(vocab: int = 384):
    g = torch.Generator().manual_seed(0)
    demo_ids = torch.randint(3, vocab, (2, 10), generator=g)
    demo_mask = torch.ones_like(demo_ids)
    demo_mask[1, 7:] = 0
    input_ids = torch.randint(3, vocab, (4, 6), generator=g)
    mask = torch.ones_like(input_ids)
    mask[3, 4:] = 0
    labels = torch.randint(3, vocab, (4, 5), generator=g)
    labels[2, 3:] = -100
    return demo_ids, demo_mask, torch.tensor([0, 0, 1, 1]), input_ids, mask, labels


def random_params(target, main_model, rows: int, scale: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s.name: scale * torch.randn(rows, s.num_layers, s.rows, s.width, generator=g)
            for s in target.slot_groups(main_model)}


def test_every_built_in_family_has_a_row_and_model_types_choose_it():
    assert set(families()) == {"t5", "llama", "gemma3", "gpt2"}
    assert {f for f, _ in FAMILIES.values() for f in [f["architecture"]]} >= {
        name for family in families().values() for name in family.tiny_names}
    for name in FAMILIES:
        main = main_model_of(name)
        assert family_of(main).name == {"qwen2": "llama", "mistral": "llama"}.get(name, name)


def test_an_unknown_model_type_is_one_line_listing_the_families():
    from transformers import BertConfig

    with pytest.raises(HypergenError, match=r"model type 'bert'\) belongs to no hypergen family; known: gemma3 "
                                            r"\(gemma3_text\); gpt2 \(gpt2\); llama \(llama, qwen2, mistral\); t5"):
        family_of(BertConfig())


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_length_prefix_and_zero_lora_leave_logits_unchanged(family):
    main = main_model_of(family)
    _, _, _, input_ids, mask, labels = batch()
    frozen = main_forward(main, input_ids, mask, labels).logits
    for target, params in ((PrefixTarget(length=0), None), (LoraTarget(rank=2, targets=FAMILIES[family][1]), 0.0)):
        target.prepare(main)
        values = random_params(target, main, 4)
        if params is not None:  # A random, B zero
            values = {k: v * 0 if k.endswith(".B") else v for k, v in values.items()}
        with target.applied(main, values):  # the prefix's eager attention rounds as the stock SDPA does not
            torch.testing.assert_close(main_forward(main, input_ids, mask, labels).logits, frozen, rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_fresh_lora_hypernetwork_leaves_logits_unchanged(family, generator):
    method = build_hypernet_method(recipe_of(family, generator, peft_spec(family, "lora")),
                                   main_model_of(family), torch.device("cpu"))
    demo_ids, demo_mask, task_index, input_ids, mask, labels = batch()
    with torch.no_grad():
        per_example = method.module(demo_ids, demo_mask).select(task_index)
        adapted = adapted_forward(method.main_model, method.target, per_example, input_ids, mask, labels, False)
        frozen = main_forward(method.main_model, input_ids, mask, labels)
    assert all(torch.count_nonzero(v) == 0 for k, v in per_example.params.items() if k.endswith(".B"))
    torch.testing.assert_close(adapted.logits, frozen.logits, rtol=0, atol=1e-6)


def by_hand(query, key, value, prefix_key, prefix_value, mask, scaling, softcap=None):
    """softmax(q [pk; k]^T * scaling (soft-capped), + [0 | mask]) [pv; v]: B x q x H x d, heads repeated for GQA."""
    key, value = torch.cat([prefix_key, key], 2), torch.cat([prefix_value, value], 2)
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(query.dtype).min)
        scores = scores + torch.nn.functional.pad(mask, (prefix_key.shape[2], 0))
    return (scores.softmax(-1) @ value).transpose(1, 2)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "t5"])  # T5's bias: tests/components/test_prefix.py
def test_prefixed_attention_equals_attention_over_concatenated_keys_and_values(family):
    main = main_model_of(family)
    target = PrefixTarget(length=3, attention="eager")
    target.prepare(main)
    params = random_params(target, main, 4, scale=1.0)
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        out = prefix_module.prefix_attention_forward(module, query, key, value, attention_mask, **kwargs)
        calls.append((module, getattr(module, prefix_module._PREFIX), query, key, value, attention_mask, kwargs,
                      out[0]))
        return out

    AttentionInterface.register(prefix_module.ATTN_IMPLEMENTATION, recording)
    try:
        _, _, _, input_ids, mask, labels = batch()
        with torch.no_grad(), target.applied(main, params):
            main_forward(main, input_ids, mask, labels)
    finally:
        AttentionInterface.register(prefix_module.ATTN_IMPLEMENTATION, prefix_module.prefix_attention_forward)
    assert len(calls) == main.config.num_hidden_layers
    config = main.config
    for module, (prefix_key, prefix_value), query, key, value, attention_mask, kwargs, out in calls:
        scaling = kwargs["scaling"]
        if family == "gemma3":  # Gemma's own query scaling, and its sliding-window mask on sliding layers
            assert scaling == config.query_pre_attn_scalar ** -0.5 != module.head_dim ** -0.5
            n = attention_mask.shape[-1]
            visible = attention_mask[0, 0] > torch.finfo(attention_mask.dtype).min / 2
            far = torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-config.sliding_window)
            assert (not visible[far].any()) == (module.sliding_window is not None)
        want = by_hand(query, key, value, prefix_key, prefix_value, attention_mask, scaling)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        if family == "gemma3":  # with a soft-cap passed (Gemma 2's way), the prefix goes through it too
            with target.applied(main, params):
                capped = prefix_module.prefix_attention_forward(module, query, key, value, attention_mask,
                                                                **{**kwargs, "softcap": 0.5})[0]
            torch.testing.assert_close(capped, by_hand(query, key, value, prefix_key, prefix_value, attention_mask,
                                                       scaling, softcap=0.5), atol=1e-5, rtol=1e-5)
            assert not torch.allclose(capped, want, atol=1e-3)


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_uncached(family, target_name):
    main = main_model_of(family)
    target = PrefixTarget(length=3) if target_name == "prefix" else LoraTarget(rank=2, targets=FAMILIES[family][1])
    target.prepare(main)
    _, _, _, input_ids, mask, _ = batch()
    if not family_of(main).encoder_decoder:
        input_ids, mask = left_align(input_ids, mask)
    out = {}
    with torch.no_grad(), target.applied(main, random_params(target, main, 4)):
        for cache in (True, False):
            out[cache] = main.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                       use_cache=cache, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out[True].sequences, out[False].sequences)
    torch.testing.assert_close(torch.stack(out[True].scores), torch.stack(out[False].scores), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_exported_lora_loads_in_peft_with_every_key_and_gives_the_same_logits(family, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    main = main_model_of(family)
    target = LoraTarget(rank=2, targets=FAMILIES[family][1])
    target.prepare(main)
    params = random_params(target, main, 1)
    config = target.export(tmp_path, {k: v[0] for k, v in params.items()}, main, None, False)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert config["fan_in_fan_out"] == (family == "gpt2")
    _, _, _, input_ids, mask, labels = batch()
    with torch.no_grad(), target.applied(main, {k: v.expand(4, *v.shape[1:]) for k, v in params.items()}):
        ours = main_forward(main, input_ids, mask, labels).logits
    peft_model = PeftModel.from_pretrained(copy.deepcopy(main), tmp_path).eval()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    loaded = {k.replace(".default", ""): v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert loaded.keys() == saved.keys()  # nothing missing, nothing unexpected
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    with torch.no_grad():
        theirs = family_of(main).forward(peft_model.get_base_model(), None, input_ids, mask, labels).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    again, again_params = LoraTarget.load(tmp_path, config, main)  # and hypergen reads it back
    assert {k: v.shape for k, v in again_params.items()} == {k: v.shape for k, v in params.items()}
    assert all(torch.allclose(again_params[k], params[k]) for k in params)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_training_steps_lower_the_loss(family, target_name, generator):
    recipe = recipe_of(family, generator, peft_spec(family, target_name), lr=3e-3)
    torch.manual_seed(0)
    method = build_hypernet_method(recipe, main_model_of(family), torch.device("cpu"))
    optimizer = make_optimizer(method.module.parameters(), recipe.training)
    demo_ids, demo_mask, task_index, input_ids, mask, labels = batch()
    losses = []
    for _ in range(6):
        per_example = method.module(demo_ids, demo_mask).select(task_index)
        loss = adapted_forward(method.main_model, method.target, per_example, input_ids, mask, labels, False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1e-3, losses


def test_default_lora_targets_are_peft_defaults():
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    for name in FAMILIES:
        main = main_model_of(name)
        family = family_of(main)
        assert list(family.default_lora_targets) == PEFT_DEFAULTS[main.config.model_type]
        sites = LoraTarget(rank=2).sites(main)  # no targets: peft's
        assert {s.module for s, _ in sites} == set(family.default_lora_targets)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_saved_hypernetwork_checks_its_main_model_by_the_family_shape_fields(family, tmp_path):
    from hypergen.models.main import save_main_model
    from hypergen.pretrained.hypernetwork import PretrainedHyperNetwork
    from hypergen.runs.assembly import assemble

    recipe = recipe_of(family, "autoregressive", peft_spec(family, "lora"))
    saved = PretrainedHyperNetwork(assemble(recipe, torch.device("cpu"))).save_pretrained(tmp_path / "saved")
    shape = json.loads((saved / "hypergen_config.json").read_text())["main_model"]["shape"]
    assert shape["num_hidden_layers"] == 2 and shape["vocab_size"] == 384
    deeper = recipe.main_model.tiny.model_copy(update={"num_layers": 3})
    model, tokenizer = load_main_model(recipe.main_model.model_copy(update={"tiny": deeper}))
    save_main_model(model, tokenizer, tmp_path / "deeper")
    with pytest.raises(HypergenError, match=r"trained for a main model with num_hidden_layers=2, but .*deeper has "
                                            r"num_hidden_layers=3$") as info:
        PretrainedHyperNetwork.from_pretrained(saved, main_model=str(tmp_path / "deeper"))
    assert "\n" not in str(info.value)


def test_tiny_architecture_names_a_registered_family():
    from hypergen.errors import RecipeError

    assert recipe_of("gpt2", "autoregressive", peft_spec("gpt2", "lora")).main_model.tiny.architecture == "gpt2"
    with pytest.raises(RecipeError, match=r"main_model\.tiny\.architecture: Value error, unknown architecture 'bert'"
                                          r"; known: gemma3, gpt2, llama, mistral, qwen2, t5"):
        parse_recipe({"main_model": {"tiny": {"architecture": "bert"}}, "data": {"source": "embedded",
                                                                                "path": "unused"}})


@pytest.mark.slow  # converts the packaged GGUF once (~100 s), then ~5 s to load; a few HART steps on 270M weights
def test_hart_lora_on_gemma3_270m_starts_as_the_frozen_model_trains_and_loads_in_peft(tmp_path):
    from hypergen.models import packaged

    if packaged.package_folder(packaged.packaged_models()["gemma3-270m"].package) is None:
        pytest.skip("the gemma3-270m package is not installed (see hypergen/models/packaged.py)")
    from peft import PeftModel

    recipe = parse_recipe({
        "main_model": {"name_or_path": "gemma3-270m"},
        "hypernetwork": {"decoder_layers": 2, "fusion_in_decoder": False, "generator": {"name": "autoregressive"}},
        "peft": {"name": "lora", "rank": 4},  # no targets: peft's q_proj, v_proj
        "data": {"source": "embedded", "path": "unused"},
        "training": {"optimizer": "adamw", "lr": 1e-4, "seed": 0},
    })
    main, tokenizer = load_main_model(recipe.main_model)
    assert main.config.model_type == "gemma3_text" and "sliding_attention" in main.config.layer_types
    method = build_hypernet_method(recipe, main, torch.device("cpu"))

    def encode(texts, n, **kwargs):
        out = tokenizer(texts, padding="max_length", truncation=True, max_length=n, return_tensors="pt", **kwargs)
        return out["input_ids"], out["attention_mask"]

    demo_ids, demo_mask = encode(["Input: cat Output: tac ; Input: dog Output: god",
                                  "Input: 3 4 Output: 7 ; Input: 1 1 Output: 2"], 24)
    input_ids, mask = encode(["Input: bird Output:", "Input: fish Output:", "Input: 2 2 Output:",
                              "Input: 5 1 Output:"], 12)
    answer, answer_mask = encode([" drib", " hsif", " 4", " 6"], 4, add_special_tokens=False)
    labels, task_index = answer.masked_fill(answer_mask == 0, -100), torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        per_example = method.module(demo_ids, demo_mask).select(task_index)
        adapted = adapted_forward(main, method.target, per_example, input_ids, mask, labels, False)
        frozen = main_forward(main, input_ids, mask, labels)
    torch.testing.assert_close(adapted.logits, frozen.logits, rtol=0, atol=1e-5)
    optimizer = make_optimizer(method.module.parameters(), recipe.training)
    losses = []
    for _ in range(4):
        per_example = method.module(demo_ids, demo_mask).select(task_index)
        loss = adapted_forward(main, method.target, per_example, input_ids, mask, labels, False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    with torch.no_grad():
        params = method.module(demo_ids[:1], demo_mask[:1]).params
    config = method.target.export(tmp_path, {k: v[0] for k, v in params.items()}, main, "gemma3-270m", False)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    peft_model = PeftModel.from_pretrained(copy.deepcopy(main), tmp_path)
    lora = [k for k in peft_model.state_dict() if "lora_" in k]
    assert len(lora) == 2 * 2 * main.config.num_hidden_layers  # q_proj, v_proj: A and B of every layer


def test_a_plugin_registers_a_family_by_model_type():
    """A family from outside hypergen (a plugin's entry point ``hypergen_families`` registers the same way)."""
    import catalogue
    from transformers import LlamaConfig, LlamaForCausalLM

    from hypergen.models.families.llama import LlamaFamily
    from hypergen.registry import registry

    class PluginConfig(LlamaConfig):
        model_type = "hypergen_test_llama"

    class PluginFamily(LlamaFamily):
        name, model_types, tiny_names = "test_llama", ("hypergen_test_llama",), ()

    registry.families.register("test_llama", func=PluginFamily)
    try:
        model = LlamaForCausalLM(PluginConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=8))
        assert isinstance(family_of(model), PluginFamily)
        assert [s.group for s, _ in LoraTarget(rank=2).sites(model)] == ["layers.q_proj"] * 2 + ["layers.v_proj"] * 2
    finally:
        del catalogue.REGISTRY[("hypergen", "families", "test_llama")]
    with pytest.raises(HypergenError, match="belongs to no hypergen family"):
        family_of(model)
