"""A causal LM's analogue of fusion-in-decoder (issue 27): the hypernetwork's encoding of the demos as a key/value
prefix of every main-model layer, K_l = W_k^l norm_l(e), V_l = W_v^l norm_l(e), padding masked.

The reference is computed another way: the keys and values by hand from each layer's weights, put before the query
by the prefix target (checked against attention over concatenated keys in test_causal.py), one example at a time
with its demo padding cut off."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from hypergen.cli import main
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.models.adapted import main_forward, main_generate
from hypergen.models.backbones.base import Context
from hypergen.models.main import freeze, tiny_causal
from hypergen.recipe import TinyT5
from tests.models.test_causal import causal_recipe
from tests.training.test_training import train

WIDTHS = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def model_of(architecture: str):
    kv_heads = {} if architecture == "gpt2" else {"num_key_value_heads": 2}
    model = tiny_causal(TinyT5(architecture=architecture, seed=3, **WIDTHS, **kv_heads), 384)
    freeze(model)
    return model


def hand_keys_values(model, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """n x d states -> keys, values: num_layers x n x (kv heads * head width), from the weights themselves."""
    keys, values = [], []
    if model.config.model_type == "gpt2":
        d = model.config.n_embd
        for block in model.transformer.h:
            qkv = block.ln_1(states) @ block.attn.c_attn.weight + block.attn.c_attn.bias  # Conv1D: x W + b
            keys.append(qkv[:, d:2 * d]), values.append(qkv[:, 2 * d:])
    else:
        for layer in model.model.layers:
            attention, hidden = layer.self_attn, layer.input_layernorm(states)
            k = hidden @ attention.k_proj.weight.T
            if getattr(attention, "k_norm", None) is not None:  # Gemma 3 normalises each key head
                k = attention.k_norm(k.view(len(states), -1, attention.head_dim)).reshape(len(states), -1)
            keys.append(k), values.append(hidden @ attention.v_proj.weight.T)
    return torch.stack(keys), torch.stack(values)


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "gpt2"])
def test_fused_demos_are_a_prefix_of_their_keys_and_values_with_padding_cut(architecture):
    model = model_of(architecture)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2, 5, 32, generator=g)  # two tasks' encoded demos; task 1 has 3 real tokens
    demo_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    rows = torch.tensor([1, 0, 1])
    query = torch.randint(3, 384, (3, 4), generator=g)
    query_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    labels = torch.randint(3, 384, (3, 3), generator=g)
    fused = main_forward(model, query, query_mask, labels, Context(states, demo_mask, rows=rows)).logits
    stock = main_forward(model, query, query_mask, labels).logits
    assert not torch.allclose(fused, stock, atol=1e-4)

    reference = copy.deepcopy(model)
    for b, task in enumerate(rows.tolist()):
        n = int(demo_mask[task].sum())
        keys, values = hand_keys_values(reference, states[task, :n])
        target = PrefixTarget(length=n)
        target.prepare(reference)
        with target.applied(reference, {"layers.key": keys[None], "layers.value": values[None]}):
            alone = main_forward(reference, query[b:b + 1], query_mask[b:b + 1], labels[b:b + 1]).logits
        torch.testing.assert_close(fused[b], alone[0], atol=1e-5, rtol=1e-5)
    # nothing stays behind on the model, and generation (with its KV cache) reads the fused demos too
    torch.testing.assert_close(main_forward(model, query, query_mask, labels).logits, stock)
    first = main_generate(model, query, query_mask, 1, fusion_states=Context(states, demo_mask, rows=rows))[:, 0]
    torch.testing.assert_close(first, fused[:, 0].argmax(-1))


def test_a_causal_run_with_fusion_trains_and_its_adapter_predicts_as_eval(tmp_path):
    recipe = causal_recipe(tmp_path, steps=8)
    recipe["hypernetwork"]["fusion_in_decoder"] = True
    run = train(tmp_path, recipe, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    name = (tmp_path / "embedded" / "splits" / "default" / "test_tasks.txt").read_text().split()[0]
    (tmp_path / "split.txt").write_text(name + "\n")
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--split", str(tmp_path / "split.txt"), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    out = tmp_path / "adapter"
    task = tmp_path / "embedded" / "tasks" / f"{name}.json"
    result = CliRunner().invoke(main, ["adapt", "--run", str(run), "--task", str(task), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "fusion.safetensors").is_file()
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in expected))
    result = CliRunner().invoke(main, ["predict", "--adapter", str(out), "--input", str(queries), "--quiet"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["prediction"] for line in result.stdout.splitlines()]
    assert got == [r["prediction"] for r in expected]


def test_a_gated_fusion_adds_tanh_g_times_attention_over_the_demos_alone():
    from hypergen.models.prefix_attention import _FUSION, prefix_attention_forward

    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 3, 8, generator=g) for _ in range(3))  # B x H x q x d
    fused_keys, fused_values = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(2))  # 2 key/value heads
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    causal = torch.full((3, 3), float("-inf")).triu(1)[None, None]
    module = torch.nn.Module()
    module._hypergen_prefix_attention = lambda m, q, k, v, mask, scaling=None, dropout=0.0, **kw: (  # eager
        (torch.softmax(q @ k.transpose(-1, -2) * scaling + mask, -1) @ v).transpose(1, 2).contiguous(), None)
    alone, _ = prefix_attention_forward(module, query, key, value, causal, scaling=0.3)
    setattr(module, _FUSION, (fused_keys, fused_values, keep, torch.tensor(0.7)))
    fused, _ = prefix_attention_forward(module, query, key, value, causal, scaling=0.3)
    expected = []
    for b in range(2):
        n = int(keep[b].sum())
        k = fused_keys[b, :, :n].repeat_interleave(2, dim=0)  # head h reads key/value head h // 2
        v = fused_values[b, :, :n].repeat_interleave(2, dim=0)
        expected.append((torch.softmax(query[b] @ k.transpose(-1, -2) * 0.3, -1) @ v).transpose(0, 1))
    torch.testing.assert_close(fused, alone + torch.tanh(torch.tensor(0.7)) * torch.stack(expected))
    setattr(module, _FUSION, (fused_keys, fused_values, keep, torch.tensor(0.0)))  # a closed gate: no change
    torch.testing.assert_close(prefix_attention_forward(module, query, key, value, causal, scaling=0.3)[0], alone)
    no_demos = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])  # example 1 has no demo token: nothing to fuse
    setattr(module, _FUSION, (fused_keys, fused_values, no_demos, torch.tensor(0.7)))
    out = prefix_attention_forward(module, query, key, value, causal, scaling=0.3)[0]
    torch.testing.assert_close(out[1], alone[1])
    torch.testing.assert_close(out[0], fused[0])


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_fresh_hypernetwork_with_fusion_starts_as_the_frozen_model_and_one_step_opens_its_gate(architecture):
    from hypergen.models.adapted import adapted_forward
    from hypergen.recipe import parse_recipe
    from hypergen.runs.assembly import build_hypernet_method

    kv = {} if architecture == "gpt2" else {"num_key_value_heads": 2}
    recipe = parse_recipe({
        "main_model": {"tiny": {"architecture": architecture, "seed": 3, **WIDTHS, **kv}},
        "hypernetwork": {"decoder_layers": 1, "fusion_in_decoder": True},
        "peft": {"name": "lora", "rank": 2},
        "data": {"source": "embedded", "path": "unused"}, "training": {"optimizer": "adamw", "lr": 1e-2}})
    method = build_hypernet_method(recipe, model_of(architecture), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    demo_ids, demo_mask = torch.randint(3, 384, (2, 7), generator=g), torch.ones(2, 7, dtype=torch.long)
    demo_mask[1, 4:] = 0
    query, labels = torch.randint(3, 384, (3, 5), generator=g), torch.randint(3, 384, (3, 2), generator=g)
    rows = torch.tensor([0, 1, 1])
    stock = main_forward(method.main_model, query, torch.ones_like(query), labels).logits
    per_example = method.module(demo_ids, demo_mask).select(rows)
    assert per_example.fusion_gate.shape == (2,) and not per_example.fusion_gate.any()
    out = adapted_forward(method.main_model, method.target, per_example, query, torch.ones_like(query), labels, True)
    torch.testing.assert_close(out.logits, stock)
    out.loss.backward()
    assert method.module.fusion_gate.grad.abs().sum() > 0  # training reaches the gate


def test_the_fusion_gates_train_at_their_own_rate():
    from hypergen.models.hypernet import FUSION_GATE_LR_SCALE
    from hypergen.recipe import parse_recipe
    from hypergen.runs.assembly import build_hypernet_method
    from hypergen.training.optim import make_optimizer

    recipe = parse_recipe({
        "main_model": {"tiny": {"architecture": "llama", "seed": 3, "num_key_value_heads": 2, **WIDTHS}},
        "hypernetwork": {"decoder_layers": 1, "fusion_in_decoder": True}, "peft": {"name": "lora", "rank": 2},
        "data": {"source": "embedded", "path": "unused"}, "training": {"optimizer": "adamw", "lr": 1e-3}})
    method = build_hypernet_method(recipe, model_of("llama"), torch.device("cpu"))
    optimizer = make_optimizer(list(method.module.parameters()), recipe.training)
    gate_groups = [g for g in optimizer.param_groups if any(p is method.module.fusion_gate for p in g["params"])]
    assert len(gate_groups) == 1 and gate_groups[0]["lr"] == pytest.approx(1e-3 * FUSION_GATE_LR_SCALE)
    assert gate_groups[0]["params"] == [method.module.fusion_gate]
