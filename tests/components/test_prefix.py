"""Tests of the prefix PEFT target on a tiny random T5."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from hypergen.components.targets.prefix import PrefixTarget
from hypergen.registry import registry

P = 3  # prefix length used throughout


def make_model() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    # Eager reference: the prefix attention is T5's eager attention; sdpa differs from it by ~1e-6 in fp32.
    config._attn_implementation = "eager"
    return T5ForConditionalGeneration(config).eval()


def random_params(target: PrefixTarget, model, batch: int, seed: int = 1, scale: float = 1.0) -> dict:
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
    assert registry.peft_targets.get("prefix.v1") is PrefixTarget
    groups = {g.name: g for g in PrefixTarget(length=5).slot_groups(model)}
    assert list(groups) == ["encoder.key", "encoder.value", "decoder.key", "decoder.value"]
    assert groups["encoder.key"].source == "encoder" and groups["decoder.value"].source == "decoder"
    assert all(g.rows == 5 and g.width == 32 and g.num_layers == 2 for g in groups.values())
    only_dec = PrefixTarget(length=0, encoder=False).slot_groups(model)
    assert [g.name for g in only_dec] == ["decoder.key", "decoder.value"] and only_dec[0].rows == 0
    assert [g.name for g in PrefixTarget(decoder=False).slot_groups(model)] == ["encoder.key", "encoder.value"]


def test_zero_length_prefix_changes_nothing():
    model = make_model()
    x, mask, y = inputs()
    ref = logits(model, x, mask, y)
    target = PrefixTarget(length=0)
    target.prepare(model)
    with target.applied(model, random_params(target, model, 2)):
        out = logits(model, x, mask, y)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_prepare_keeps_stock_behaviour_outside_applied():
    model = make_model()
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("sdpa")  # the library default, also matches within fp32 noise
    x, mask, y = inputs()
    target = PrefixTarget(length=P)
    target.prepare(model)
    target.prepare(model)  # idempotent
    assert model.encoder.config._attn_implementation == "hypergen_prefix"
    assert model.decoder.config._attn_implementation == "hypergen_prefix"
    ref = logits(stock, x, mask, y)
    torch.testing.assert_close(logits(model, x, mask, y), ref, atol=1e-5, rtol=0)
    params = random_params(target, model, 2)
    with target.applied(model, params):
        assert (logits(model, x, mask, y) - ref).abs().max() > 1e-2
    torch.testing.assert_close(logits(model, x, mask, y), ref, atol=1e-5, rtol=0)
    with pytest.raises(KeyError), target.applied(model, params):
        raise KeyError("boom")
    torch.testing.assert_close(logits(model, x, mask, y), ref, atol=1e-5, rtol=0)
    assert all(getattr(b.layer[0].SelfAttention, "_hypergen_prefix", None) is None for b in model.encoder.block)


def test_applied_requires_prepare():
    model = make_model()
    target = PrefixTarget(length=P)
    with pytest.raises(RuntimeError), target.applied(model, random_params(target, model, 1)):
        pass


def test_per_example_prefixes_mix_in_a_batch():
    model = make_model()
    target = PrefixTarget(length=P)
    target.prepare(model)
    x, mask, y = inputs()  # row 1 is padded
    params = random_params(target, model, 2)
    with target.applied(model, params):
        both = logits(model, x, mask, y)
    for b in range(2):
        with target.applied(model, {k: v[b:b + 1] for k, v in params.items()}):
            alone = logits(model, x[b:b + 1, : int(mask[b].sum())], None, y[b:b + 1])  # padding stripped
        torch.testing.assert_close(both[b:b + 1], alone, atol=1e-5, rtol=0)
    # Different prefixes really do different things.
    with target.applied(model, {k: v[[1, 0]] for k, v in params.items()}):
        swapped = logits(model, x, mask, y)
    assert (swapped - both).abs().max() > 1e-2


def test_prefix_attention_matches_manual_computation():
    """One encoder self-attention layer vs softmax over [prefix keys, zero bias ; real keys, T5 bias + padding]."""
    model = make_model()
    target = PrefixTarget(length=P)
    target.prepare(model)
    attn = model.encoder.block[0].layer[0].SelfAttention
    B, n, H, dk = 2, 6, 4, 8
    h = torch.randn(B, n, 32)
    pad = torch.ones(B, n, dtype=torch.bool)
    pad[1, 4:] = False
    mask4d = torch.where(pad, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    params = random_params(target, model, B)
    with torch.no_grad(), target.applied(model, params):
        out = attn(h, mask=mask4d)[0]
    pk = params["encoder.key"][:, 0].view(B, P, H, dk).transpose(1, 2)
    pv = params["encoder.value"][:, 0].view(B, P, H, dk).transpose(1, 2)
    with torch.no_grad():
        q, k, v = (lin(h).view(B, n, H, dk).transpose(1, 2) for lin in (attn.q, attn.k, attn.v))
        bias = attn.compute_bias(n, n)  # 1 x H x n x n
        real = q @ k.transpose(-1, -2) + bias
        real = real.masked_fill(~pad[:, None, None, :], float("-inf"))
        scores = torch.cat([q @ pk.transpose(-1, -2), real], dim=-1)  # no scaling in T5
        ctx = scores.softmax(-1) @ torch.cat([pv, v], dim=-2)
        expected = attn.o(ctx.transpose(1, 2).reshape(B, n, H * dk))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Cross-attention never gets a prefix.
    assert not hasattr(model.decoder.block[0].layer[1].EncDecAttention, "_hypergen_prefix")


def test_decoder_stays_causal_with_prefix():
    model = make_model()
    target = PrefixTarget(length=P)
    target.prepare(model)
    x, mask, y = inputs()
    y2 = y.clone()
    y2[:, -1] = (y[:, -1] + 7) % 384
    with target.applied(model, random_params(target, model, 2)):
        a, b = logits(model, x, mask, y), logits(model, x, mask, y2)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=1e-6, rtol=0)
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3


def test_greedy_generate_with_cache_equals_manual_decoding():
    model = make_model()
    target = PrefixTarget(length=P)
    target.prepare(model)
    x, mask, _ = inputs()
    steps = 6
    params = random_params(target, model, 2, scale=3.0)
    with torch.no_grad(), target.applied(model, params):
        generated = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                                   num_beams=1, use_cache=True)
        dec = torch.zeros(2, 1, dtype=torch.long)
        done = torch.zeros(2, dtype=torch.bool)
        for _ in range(steps):
            nxt = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits[:, -1]
            nxt = nxt.argmax(-1).masked_fill(done, 0)
            done |= nxt == 1
            dec = torch.cat([dec, nxt[:, None]], dim=1)
            if done.all():
                break
    assert torch.equal(generated, dec)
    with torch.no_grad():
        stock = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=steps, do_sample=False)
    assert not torch.equal(stock, generated)  # the prefix mattered


def test_beam_search_with_per_example_prefixes():
    model = make_model()
    target = PrefixTarget(length=P)
    target.prepare(model)
    x, mask, _ = inputs()
    params = random_params(target, model, 2, scale=3.0)
    kwargs = dict(max_new_tokens=5, num_beams=2, do_sample=False)
    with torch.no_grad(), target.applied(model, params):
        both = model.generate(input_ids=x, attention_mask=mask, **kwargs)
    assert both.shape[0] == 2
    for b in range(2):
        with torch.no_grad(), target.applied(model, {k: v[b:b + 1] for k, v in params.items()}):
            alone = model.generate(input_ids=x[b:b + 1], attention_mask=mask[b:b + 1], **kwargs)[0]
        row = both[b]
        assert torch.equal(row[: alone.shape[0]], alone) and bool((row[alone.shape[0]:] == 0).all())


# ------------------------------------------------------------------------- SDPA kernel == eager kernel (to 1e-5)

def _both_kernels(length: int = P):
    """The same model and prefixes run with the "sdpa" and with the "eager" attention kernel."""
    model = make_model()
    sdpa, eager = PrefixTarget(length=length, attention="sdpa"), PrefixTarget(length=length, attention="eager")
    return model, sdpa, eager, random_params(sdpa, model, 2, scale=3.0)


def _run(model, target, params, fn):
    target.prepare(model)
    with torch.no_grad(), target.applied(model, params):
        return fn()


def test_sdpa_encoder_self_attention_equals_eager():
    model, sdpa, eager, params = _both_kernels()
    x, mask, _ = inputs()  # row 1 is padded
    encode = lambda: model.encoder(input_ids=x, attention_mask=mask).last_hidden_state  # noqa: E731
    fast, slow = _run(model, sdpa, params, encode), _run(model, eager, params, encode)
    assert fast.shape == (2, 7, 32)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [P, 0])
def test_sdpa_decoder_causal_with_padding_equals_eager(length):
    model, sdpa, eager, params = _both_kernels(length)
    x, mask, y = inputs()
    decoder_mask = torch.ones_like(y)
    decoder_mask[1, 3:] = 0  # padded decoder input too
    run = lambda: model(input_ids=x, attention_mask=mask, decoder_input_ids=y,  # noqa: E731
                        decoder_attention_mask=decoder_mask).logits
    fast, slow = _run(model, sdpa, params, run), _run(model, eager, params, run)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    if length == 0:  # a zero-length prefix is the stock model
        stock = make_model()
        torch.testing.assert_close(fast, stock(input_ids=x, attention_mask=mask, decoder_input_ids=y,
                                               decoder_attention_mask=decoder_mask).logits.detach(),
                                   atol=1e-5, rtol=1e-5)


def test_sdpa_gradients_equal_eager():
    """Gradients reach the prefixes and the main model's position bias identically through both kernels."""
    x, mask, y = inputs()
    grads = []
    for kernel in ("sdpa", "eager"):
        model = make_model()
        target = PrefixTarget(length=P, attention=kernel)
        target.prepare(model)
        params = {k: v.requires_grad_() for k, v in random_params(target, model, 2).items()}
        with target.applied(model, params):
            model(input_ids=x, attention_mask=mask, labels=y).loss.backward()
        bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad
        grads.append([params[k].grad for k in sorted(params)] + [bias])
    for fast, slow in zip(*grads):
        assert fast.abs().sum() > 0
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_sdpa_beam_search_generate_equals_eager():
    model, sdpa, eager, params = _both_kernels()
    x, mask, _ = inputs()
    generate = lambda: model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, num_beams=3,  # noqa: E731
                                      do_sample=False, output_scores=True, return_dict_in_generate=True)
    fast, slow = _run(model, sdpa, params, generate), _run(model, eager, params, generate)
    assert torch.equal(fast.sequences, slow.sequences)
    torch.testing.assert_close(fast.sequences_scores, slow.sequences_scores, atol=1e-5, rtol=1e-5)


def test_attention_weights_asked_for_use_eager():
    """SDPA returns no weights: with output_attentions the sdpa target falls back to eager and returns them."""
    model, sdpa, eager, params = _both_kernels()
    x, mask, y = inputs()
    run = lambda: model(input_ids=x, attention_mask=mask, decoder_input_ids=y,  # noqa: E731
                        output_attentions=True).encoder_attentions
    fast, slow = _run(model, sdpa, params, run), _run(model, eager, params, run)
    assert len(fast) == 2 and fast[0].shape == (2, 4, 7, P + 7)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unknown_attention_kernel_is_refused():
    with pytest.raises(ValueError, match="prefix attention must be one of sdpa, eager, got 'flash'"):
        PrefixTarget(attention="flash")
