"""Tests of the LoRA PEFT target on a tiny random T5 (inner width n_heads * d_kv != d_model, to catch transposes)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from hypergen.components.targets.lora import LoraTarget
from hypergen.registry import registry

R = 2  # LoRA rank used throughout
INNER = 24  # num_heads * d_kv


def make_model() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=32, d_kv=6, d_ff=64, num_layers=3, num_decoder_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    # Eager attention: sdpa's padded and unpadded rows differ by ~2e-5 in fp32, with or without a LoRA.
    # num_decoder_layers <= num_layers: transformers 5.24's generate() sizes the KV cache by num_layers.
    config._attn_implementation = "eager"
    return T5ForConditionalGeneration(config).eval()


def random_params(target: LoraTarget, model, batch: int, seed: int = 1, scale: float = 0.1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {g.name: scale * torch.randn(batch, g.num_layers, g.rows, g.width, generator=gen)
            for g in target.slot_groups(model)}


def inputs(batch: int = 2, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 384, (batch, 7), generator=gen)
    y = torch.randint(2, 384, (batch, 5), generator=gen)
    mask = torch.ones_like(x)
    if batch > 1:
        mask[1, 4:] = 0
        x[1, 4:] = 0
    return x, mask, y


def logits(model, x, mask, y) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits


def test_registered_and_slot_groups():
    model = make_model()
    assert registry.peft_targets.get("lora.v1") is LoraTarget
    assert registry.resolve("peft_targets", "lora") is LoraTarget
    groups = {g.name: g for g in LoraTarget(rank=R).slot_groups(model)}
    assert list(groups) == ["encoder.self.q.A", "encoder.self.q.B", "encoder.self.v.A", "encoder.self.v.B",
                            "decoder.self.q.A", "decoder.self.q.B", "decoder.self.v.A", "decoder.self.v.B"]
    assert groups["encoder.self.q.A"] == groups["encoder.self.q.A"].__class__("encoder.self.q.A", "encoder", 3, R, 32,
                                                                              fan_in_lr=True)
    assert groups["encoder.self.q.B"].zero_at_init and not groups["encoder.self.q.A"].zero_at_init  # peft's start
    assert (groups["encoder.self.q.B"].rows, groups["encoder.self.q.B"].width) == (R, INNER)  # B^T: r x d_out
    assert groups["decoder.self.v.B"].num_layers == 2 and groups["decoder.self.v.B"].source == "decoder"
    full = {g.name: g for g in LoraTarget(rank=3, targets=["q", "o"], attention=["self", "cross"]).slot_groups(model)}
    assert "encoder.cross.q.A" not in full  # the encoder has no cross-attention
    assert (full["decoder.cross.q.A"].width, full["decoder.cross.q.B"].width) == (32, INNER)
    assert (full["decoder.self.o.A"].width, full["decoder.self.o.B"].width) == (INNER, 32)  # o: inner -> d_model
    assert all(g.rows == 3 for g in full.values())
    with pytest.raises(ValueError):
        LoraTarget(targets=["x"])
    with pytest.raises(ValueError):
        LoraTarget(attention=["cross"], sides=["encoder"])


def test_outside_applied_is_the_stock_model_and_zero_lora_changes_nothing():
    model = make_model()
    stock = copy.deepcopy(model)
    x, mask, y = inputs()
    target = LoraTarget(rank=R, targets=["q", "k", "v", "o"], attention=["self", "cross"])
    target.prepare(model)
    target.prepare(model)  # idempotent: one hook per Linear
    assert len(model.encoder.block[0].layer[0].SelfAttention.q._forward_hooks) == 1
    ref = logits(stock, x, mask, y)
    assert torch.equal(logits(model, x, mask, y), ref)
    params = random_params(target, model, 2)
    zero_b = {k: (torch.zeros_like(v) if k.endswith(".B") else v) for k, v in params.items()}
    with target.applied(model, zero_b):
        assert torch.equal(logits(model, x, mask, y), ref)
    with target.applied(model, params):
        assert (logits(model, x, mask, y) - ref).abs().max() > 1e-2
    with pytest.raises(KeyError), target.applied(model, params):
        raise KeyError("boom")
    assert torch.equal(logits(model, x, mask, y), ref)


def test_applied_requires_prepare():
    model = make_model()
    target = LoraTarget(rank=R)
    with pytest.raises(RuntimeError), target.applied(model, random_params(target, model, 1)):
        pass


def test_matches_manual_low_rank_update():
    model = make_model()
    target = LoraTarget(rank=R, alpha=3.0, targets=["v"])
    target.prepare(model)
    linear = model.decoder.block[1].layer[0].SelfAttention.v
    params = random_params(target, model, 2)
    h = torch.randn(2, 5, 32)
    with torch.no_grad(), target.applied(model, params):
        out = linear(h)
    a = params["decoder.self.v.A"][:, 1]  # B x r x d_in
    b = params["decoder.self.v.B"][:, 1].transpose(1, 2)  # B x d_out x r
    with torch.no_grad():
        expected = torch.stack([h[i] @ linear.weight.T + (3.0 / R) * (b[i] @ (a[i] @ h[i].T)).T for i in range(2)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_per_example_lora_mixes_in_a_batch():
    model = make_model()
    target = LoraTarget(rank=R, attention=["self", "cross"])
    target.prepare(model)
    x, mask, y = inputs()  # row 1 is padded
    params = random_params(target, model, 2)
    with target.applied(model, params):
        both = logits(model, x, mask, y)
    for b in range(2):
        with target.applied(model, {k: v[b:b + 1] for k, v in params.items()}):
            alone = logits(model, x[b:b + 1, : int(mask[b].sum())], None, y[b:b + 1])  # padding stripped
        torch.testing.assert_close(both[b:b + 1], alone, atol=1e-5, rtol=0)
    with target.applied(model, {k: v[[1, 0]] for k, v in params.items()}):
        swapped = logits(model, x, mask, y)
    assert (swapped - both).abs().max() > 1e-2


def test_beam_search_with_per_example_lora():
    model = make_model()
    target = LoraTarget(rank=R, attention=["self", "cross"])
    target.prepare(model)
    x, mask, _ = inputs()
    params = random_params(target, model, 2, scale=0.5)
    kwargs = dict(max_new_tokens=5, num_beams=2, do_sample=False)
    with torch.no_grad(), target.applied(model, params):
        both = model.generate(input_ids=x, attention_mask=mask, **kwargs)  # encoder: B rows, decoder: B * beams
    assert both.shape[0] == 2
    for b in range(2):
        with torch.no_grad(), target.applied(model, {k: v[b:b + 1] for k, v in params.items()}):
            alone = model.generate(input_ids=x[b:b + 1], attention_mask=mask[b:b + 1], **kwargs)[0]
        row = both[b]
        assert torch.equal(row[: alone.shape[0]], alone) and bool((row[alone.shape[0]:] == 0).all())
    with torch.no_grad():
        stock = model.generate(input_ids=x, attention_mask=mask, **kwargs)
    assert not torch.equal(stock, both)  # the LoRA mattered


def test_hypernetwork_trains_lora_and_only_it_gets_gradients(tmp_path):
    from hypergen.runs.assembly import assemble
    from hypergen.recipe import parse_recipe
    from hypergen.data.tasks import load_task_folder
    from hypergen.runs.tasks import data_folder
    from tests.training.test_training import embedded_recipe

    data = embedded_recipe(tmp_path, steps=2)
    data["peft"] = {"name": "lora", "rank": 2}
    recipe = parse_recipe(json.loads(json.dumps(data)))
    assembled = assemble(recipe, torch.device("cpu"))
    method = assembled.method
    assert isinstance(method.target, LoraTarget)
    tasks = load_task_folder(data_folder(recipe), "train")[:2]
    batch = assembled.collator([(t, t.instances[:2]) for t in tasks])
    optimizer = torch.optim.AdamW(method.module.parameters(), lr=1e-3)
    method.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss, _ = method.loss(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert not any(p.requires_grad or p.grad is not None for p in method.main_model.parameters())
    heads = method.module.projector.heads
    assert set(heads) == {"encoder_self_q_A", "encoder_self_q_B", "encoder_self_v_A", "encoder_self_v_B",
                          "decoder_self_q_A", "decoder_self_q_B", "decoder_self_v_A", "decoder_self_v_B"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in heads.parameters())
