"""Generators, projector, regularizer and the assembled hypernetwork: shapes, the autoregressive contract,
and that only the hypernetwork learns."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hypergen.components.generators import AutoregressiveGenerator, NonAutoregressiveGenerator
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.regularizers import LocalConsistency
from hypergen.components.targets.prefix import PrefixTarget
from hypergen.data.collate import Collator
from hypergen.data.tasks import Example, Task
from hypergen.models.backbones import main_model_shape
from hypergen.models.hypernet import HyperNetwork
from hypergen.recipe import Data, Evaluation
from hypergen.training.methods import HypernetMethod

P = 4


def build(tiny_main, generator, k=1):
    target = PrefixTarget(length=P)
    torch.manual_seed(1)
    hypernet = HyperNetwork(tiny_main, generator, LayerwiseMLPProjector(), target.slot_groups(tiny_main), k)
    target.prepare(tiny_main)
    return hypernet, target


def demos(num_tasks=2, length=7):
    torch.manual_seed(2)
    ids = torch.randint(3, 300, (num_tasks, length))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return ids, mask


@pytest.mark.parametrize("generator,rows", [(AutoregressiveGenerator(), 2 * 3), (NonAutoregressiveGenerator(), 2 * P)])
def test_shapes(tiny_main, generator, rows):
    hypernet, _ = build(tiny_main, generator)
    out = hypernet(*demos())
    assert out.generated.states.shape == (2, rows, 32)
    width = tiny_main.config.num_heads * tiny_main.config.d_kv
    assert out.params["encoder.key"].shape == (2, 3, P, width)
    assert out.params["decoder.value"].shape == (2, 2, P, width)
    assert out.encoder_states.shape == (2, 7, 32)


def test_hart_rows_feed_their_layer(tiny_main):
    hypernet, _ = build(tiny_main, AutoregressiveGenerator())
    generated = hypernet(*demos()).generated
    assert generated.rows["encoder"] == [[0], [2], [4]] and generated.rows["decoder"] == [[1], [3]]
    reverse, _ = build(tiny_main, AutoregressiveGenerator(reverse=True))
    assert reverse(*demos()).generated.rows["encoder"] == [[4], [2], [0]]


def test_projector_first_linear_shared_second_per_layer(tiny_main):
    hypernet, _ = build(tiny_main, AutoregressiveGenerator())
    head = hypernet.projector.heads["encoder_key"]
    assert head.first.weight.shape == (P * 32, 32)  # HART: d_h -> p * d_h, shared by the group's layers
    assert head.second_weight.shape == (3, 32, 32)  # one d_h -> width map per layer
    ht, _ = build(tiny_main, NonAutoregressiveGenerator())
    assert ht.projector.heads["encoder_key"].first.weight.shape == (32, 32)  # HyperTuning: d_h -> d_h per row


def test_projector_matches_paper_formula(tiny_main):
    hypernet, _ = build(tiny_main, AutoregressiveGenerator())
    generated = hypernet(*demos()).generated
    head = hypernet.projector.heads["decoder_value"]
    layer = 1
    h = generated.states[:, 2 * layer + 1]  # h_l[1] feeds decoder layer l
    normed = torch.nn.functional.layer_norm(h, (32,), head.norm_weight[layer], head.norm_bias[layer], eps=head.eps)
    expected = torch.tanh(head.first(normed).view(2, P, 32)) @ head.second_weight[layer] + head.second_bias[layer]
    got = hypernet.projector(generated)["decoder.value"][:, layer]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_autoregressive_cache_equals_recompute(tiny_main):
    hypernet, _ = build(tiny_main, AutoregressiveGenerator(), k=2)
    hypernet.eval()
    ids, mask = demos()
    cached = hypernet(ids, mask).generated.states
    hypernet.generator.use_cache = False
    recomputed = hypernet(ids, mask).generated.states
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)


def test_autoregressive_state_depends_only_on_earlier_steps(tiny_main):
    hypernet, _ = build(tiny_main, AutoregressiveGenerator(), k=2)
    hypernet.eval()
    context = hypernet.backbone.encode(*demos())
    shape = main_model_shape(tiny_main)
    full = hypernet.generator(hypernet.backbone, context, shape).states
    shorter = type(shape).of(encoder=2, decoder=1)
    truncated = hypernet.generator(hypernet.backbone, context, shorter).states
    torch.testing.assert_close(full[:, :4], truncated, atol=1e-5, rtol=1e-5)
    # and gradients flow through the chain: the last state depends on z through every step
    hypernet.generator.z.grad = None
    full[:, -1].sum().backward()
    assert hypernet.generator.z.grad is not None and hypernet.generator.z.grad.abs().sum() > 0


@pytest.mark.parametrize("use_cache", [True, False])
def test_fed_back_state_is_dropped_out_once(tiny_main, use_cache):
    """In training, step l's input is exactly step l-1's output h_{l-1} (the states the projector sees, already
    dropped out once by the decoder's output dropout), not a second dropout of it; z is dropped out once."""
    hypernet, _ = build(tiny_main, AutoregressiveGenerator(use_cache=use_cache), k=1)
    hypernet.train()
    hypernet.decoder.dropout.p = 0.5
    inputs = []
    hypernet.decoder.block[0].register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach()))
    ids, mask = demos()
    states = hypernet(ids, mask).generated.states.detach()  # T x 2L x d_h, L = 3
    assert len(inputs) == 3
    z = hypernet.generator.z.detach()
    first = inputs[0][:, :2]
    assert ((first == 0) | torch.isclose(first, 2 * z.expand_as(first))).all() and (first == 0).any()
    for step in (1, 2):
        fed_back = inputs[step][:, -2:]  # the new tokens of this step (the uncached path recomputes the earlier)
        torch.testing.assert_close(fed_back, states[:, 2 * step - 2: 2 * step], rtol=0, atol=0)


def test_non_autoregressive_is_bidirectional(tiny_main):
    hypernet, _ = build(tiny_main, NonAutoregressiveGenerator(), k=2)
    hypernet.eval()
    ids, mask = demos()
    before = hypernet(ids, mask).generated.states
    with torch.no_grad():
        hypernet.generator.z[-1] += 1.0  # change the last input token: the first output must change too
    after = hypernet(ids, mask).generated.states
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_local_consistency():
    reg = LocalConsistency(alpha=5.0)
    first = torch.randn(3, 6, 8, requires_grad=True)
    assert reg.loss(first, 0).item() == 0.0
    second = torch.randn(3, 6, 8, requires_grad=True)
    value = reg.loss(second, 1)
    torch.testing.assert_close(value, ((second - first.detach()) ** 2).mean())
    value.backward()
    assert first.grad is None and second.grad is not None  # the previous states are detached
    fewer = torch.randn(2, 6, 8)
    torch.testing.assert_close(reg.loss(fewer, 2), ((fewer - second.detach()[:2]) ** 2).mean())
    restored = LocalConsistency()
    restored.load_state_dict(reg.state_dict())
    third = torch.randn(2, 6, 8)
    torch.testing.assert_close(restored.loss(third, 3), reg.loss(third, 3))


def consistency_terms(pairing, processes, micro_batches, steps, skipped=()):
    """The weighted consistency term of each step and its gradient with respect to the step's states, computed
    as the trainer does: ``processes`` x ``micro_batches`` micro-batches share the step's rows (rank 0's
    micro-batches first), each micro-batch's loss is divided by the accumulation count, the gradients are averaged
    over the processes; ``end_step`` after every step (``skipped``: steps whose update was skipped)."""
    regularizers = [LocalConsistency(alpha=5.0, pairing=pairing) for _ in range(processes)]
    out = []
    for step, states in enumerate(steps):
        states = states.clone().requires_grad_(True)
        chunks = states.chunk(processes * micro_batches)
        term = sum(regularizers[p].alpha * regularizers[p].loss(chunks[p * micro_batches + m], step) / micro_batches
                   for p in range(processes) for m in range(micro_batches)) / processes
        grad = torch.autograd.grad(term, states)[0] if term.requires_grad else torch.zeros_like(states)
        out.append((term.detach(), grad))
        for regularizer in regularizers:
            regularizer.end_step(applied=step not in skipped)
    return out


def test_local_consistency_pairs_iterations_whatever_the_micro_batch_layout():
    """Row pairing: one micro-batch of 8 task rows, 4 of 2, or 2 processes x 2 of 2 give the same weighted term
    and gradient as the formula over the whole batch, alpha * MSE(H_t, H_{t-1}); the whole first step gives 0,
    and a skipped step leaves the previous states as they were (step 3 compares with step 1)."""
    torch.manual_seed(0)
    steps = [torch.randn(8, 6, 4) for _ in range(4)]
    previous = {1: steps[0], 2: steps[1], 3: steps[1]}  # step index 2 is skipped
    for layout in ((1, 1), (1, 4), (2, 2)):
        terms = consistency_terms("row", *layout, steps, skipped={2})
        assert terms[0][0].item() == 0.0 and not terms[0][1].any()
        for step, target in previous.items():
            states = steps[step].clone().requires_grad_(True)
            expected = 5.0 * F.mse_loss(states, target)
            (grad,) = torch.autograd.grad(expected, states)
            torch.testing.assert_close(terms[step][0], expected.detach(), msg=f"{layout} step {step}")
            torch.testing.assert_close(terms[step][1], grad, msg=f"{layout} step {step}")


def test_local_consistency_mean_pairing_compares_micro_batch_means():
    """Mean pairing: with one micro-batch it is the batch-mean reading; with k micro-batches the term is the
    average over micro-batches of MSE(mean of micro-batch m at t, its mean at t-1), the same in one process (4
    micro-batches) as in two (2 each)."""
    torch.manual_seed(1)
    steps = [torch.randn(8, 6, 4) for _ in range(3)]
    whole = consistency_terms("mean", 1, 1, steps)
    for step in (1, 2):
        torch.testing.assert_close(whole[step][0], 5.0 * F.mse_loss(steps[step].mean(0), steps[step - 1].mean(0)))
    one, two = consistency_terms("mean", 1, 4, steps), consistency_terms("mean", 2, 2, steps)
    for step in (1, 2):
        micro_means = [(a.mean(0), b.mean(0)) for a, b in zip(steps[step].chunk(4), steps[step - 1].chunk(4))]
        expected = 5.0 * sum(F.mse_loss(a, b) for a, b in micro_means) / 4
        torch.testing.assert_close(one[step][0], expected)
        torch.testing.assert_close(two[step][0], expected)
        torch.testing.assert_close(two[step][1], one[step][1])
    assert not torch.allclose(one[1][0], whole[1][0])  # micro-batch means are not the batch mean


def test_local_consistency_checkpoint_holds_the_previous_step():
    torch.manual_seed(2)
    reg = LocalConsistency(alpha=2.0)
    first = [torch.randn(2, 6, 4) for _ in range(3)]
    for states in first:
        assert reg.loss(states, 0).item() == 0.0
    reg.end_step(applied=True)
    restored = LocalConsistency(alpha=2.0)
    restored.load_state_dict({k: v.clone() for k, v in reg.state_dict().items()})
    for m, states in enumerate(torch.randn(3, 2, 6, 4)):
        expected = F.mse_loss(states, first[m])
        torch.testing.assert_close(restored.loss(states, 1), expected)
        torch.testing.assert_close(reg.loss(states, 1), expected)


def test_only_hypernetwork_gets_gradients(tiny_main):
    from transformers import ByT5Tokenizer

    hypernet, target = build(tiny_main, AutoregressiveGenerator())
    method = HypernetMethod(tiny_main, hypernet, target, [LocalConsistency()], fusion=True, eval_cfg=Evaluation())
    task = Task("t", "Add x.", [Example("a", ("ax",)), Example("b", ("bx",))],
                [Example("c", ("cx",)), Example("d", ("dx",))], "mem")
    data = Data(source="embedded", max_demo_length=64, max_input_length=16, max_target_length=8)
    batch = Collator(ByT5Tokenizer(), data)([(task, task.instances)])
    loss, parts = method.loss(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in tiny_main.parameters())
    trainable = dict(hypernet.named_parameters())
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, missing
    assert hypernet.generator.z.grad.abs().sum() > 0
    assert set(parts) == {"loss", "local_consistency"}


def test_hypernetwork_initialised_from_main(tiny_main):
    hypernet, _ = build(tiny_main, AutoregressiveGenerator(), k=1)
    assert len(hypernet.decoder.block) == 1
    torch.testing.assert_close(hypernet.decoder.block[0].layer[0].SelfAttention.q.weight,
                               tiny_main.decoder.block[0].layer[0].SelfAttention.q.weight)
    torch.testing.assert_close(hypernet.encoder.block[2].layer[1].DenseReluDense.wo.weight,
                               tiny_main.encoder.block[2].layer[1].DenseReluDense.wo.weight)
    assert hypernet.encoder.block[0].layer[0].SelfAttention.q.weight is not \
        tiny_main.encoder.block[0].layer[0].SelfAttention.q.weight


@pytest.mark.parametrize("k", [1, 2])
def test_reported_attention_is_the_softmax_the_decoder_used(tiny_main, k):
    """GeneratedStates.attentions (recomputed for analysis) equals the weights T5's own attention computed, also
    when the last hypernetwork layer is the first (k=1), the one that computes the relative position bias."""
    hypernet, _ = build(tiny_main, NonAutoregressiveGenerator(), k)
    hypernet.eval()
    seen = []
    last = hypernet.decoder.block[-1].layer[0].SelfAttention
    handle = last.register_forward_hook(lambda module, args, output: seen.append(output[2]))
    with torch.no_grad():
        out = hypernet(*demos(), output_attentions=True)
    handle.remove()
    assert out.generated.attentions.shape == seen[-1].shape == (2, 4, 2 * P, 2 * P)
    torch.testing.assert_close(out.generated.attentions, seen[-1], atol=1e-6, rtol=1e-5)


def test_hypernetwork_starts_from_fp32_weights_when_the_main_model_runs_in_bf16(tmp_path):
    """main_model.dtype bfloat16 rounds the frozen main model only: the hypernetwork's copy of the encoder and
    decoder is the main model's fp32 weights (here the tiny model's fp32 initialisation), not their bf16 rounding."""
    from hypergen.models.main import tiny_t5
    from hypergen.recipe import parse_recipe
    from hypergen.runs.assembly import assemble

    from tests.training.test_training import embedded_recipe

    data = embedded_recipe(tmp_path)
    data["main_model"]["dtype"] = "bfloat16"
    recipe = parse_recipe(data)
    method = assemble(recipe, torch.device("cpu")).method
    reference = tiny_t5(recipe.main_model.tiny, vocab_size=method.main_model.config.vocab_size)
    assert all(p.dtype == torch.bfloat16 for p in method.main_model.parameters())
    for name in ("encoder.block.1.layer.1.DenseReluDense.wo.weight", "decoder.block.0.layer.0.SelfAttention.q.weight"):
        copied, fp32 = method.module.get_parameter(name), reference.get_parameter(name)
        assert copied.dtype == torch.float32
        torch.testing.assert_close(copied.detach(), fp32.detach(), rtol=0, atol=0)
        assert not torch.equal(copied.detach(), fp32.detach().bfloat16().float())
