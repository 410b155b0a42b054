"""Decoder-only main models (issue 17): the causal backbone, causal LoRA, the [query ; answer] forward, the peft
round trip of `hypergen adapt`, a tiny end-to-end train and the full-size recipes' fail-fast check."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from hypergen.cli import main
from hypergen.components.base import SlotGroup
from hypergen.components.generators import AutoregressiveGenerator, NonAutoregressiveGenerator
from hypergen.components.projectors import LayerwiseMLPProjector
from hypergen.components.targets.lora import LoraTarget
from hypergen.errors import HypergenError, RecipeError
from hypergen.models.adapted import main_forward, main_generate
from hypergen.models.backbones import main_model_shape
from hypergen.models.hypernet import HyperNetwork
from hypergen.models.main import freeze, tiny_causal
from hypergen.recipe import TinyT5
from hypergen.runs.folder import load_final
from tests.training.test_training import embedded_recipe, train

REPO = Path(__file__).resolve().parents[2]
LAYERS = 3


def causal_model(architecture: str = "llama"):
    model = tiny_causal(TinyT5(architecture=architecture, d_model=32, d_kv=8, d_ff=64, num_layers=LAYERS,
                               num_heads=4, num_key_value_heads=2), 384)
    freeze(model)
    return model


def hypernet(model, generator, k: int = 2) -> HyperNetwork:
    torch.manual_seed(0)
    groups = [SlotGroup("layers.q_proj.A", "layers", LAYERS, 2, 32)]
    net = HyperNetwork(model, generator, LayerwiseMLPProjector(), groups, k)
    return net.eval()


def demos(padded: bool = True):
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_hypernetwork_is_the_first_k_layers_and_one_token_per_layer(architecture):
    model = causal_model(architecture)
    net = hypernet(model, AutoregressiveGenerator(), k=2)
    assert main_model_shape(model).groups == (("layers", LAYERS),)
    assert len(net.decoder.layers) == 2 and net.generator.z.shape == (1, 32)
    torch.testing.assert_close(net.decoder.layers[1].self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)
    assert net.decoder.layers[0].self_attn.q_proj.weight is not model.model.layers[0].self_attn.q_proj.weight
    out = net(*demos())
    assert out.generated.states.shape == (2, LAYERS, 32)
    assert out.generated.rows == {"layers": [[0], [1], [2]]}
    assert out.params["layers.q_proj.A"].shape == (2, LAYERS, 2, 32)


def test_decode_continues_the_demo_sequence():
    """encode + decode of one token equals one causal pass of the k layers over [demos ; token]; with padded
    demos, the padding is invisible (same state as the unpadded demos alone)."""
    model = causal_model()
    net = hypernet(model, AutoregressiveGenerator())
    ids, mask = demos(padded=False)
    token = torch.randn(2, 1, 32)
    with torch.no_grad():
        state, _ = net.backbone.decode(token, net.backbone.encode(ids, mask))
        embeds = torch.cat([net.decoder.embed_tokens(ids), token], dim=1)
        reference = net.decoder(inputs_embeds=embeds).last_hidden_state[:, -1:]
        torch.testing.assert_close(state, reference, atol=1e-5, rtol=1e-5)
        short = net.backbone.decode(token[1:], net.backbone.encode(ids[1:, :6], mask[1:, :6]))[0]
        padded_ids = ids.clone()
        padded_ids[1, 6:] = 0
        padded_mask = mask.clone()
        padded_mask[1, 6:] = 0
        padded = net.backbone.decode(token, net.backbone.encode(padded_ids, padded_mask))[0]
    torch.testing.assert_close(padded[1:], short, atol=1e-5, rtol=1e-5)


def test_cached_equals_uncached_and_state_l_ignores_later_steps():
    model = causal_model()
    net = hypernet(model, AutoregressiveGenerator())
    with torch.no_grad():
        cached = net(*demos()).generated.states
        net.generator.use_cache = False
        recomputed = net(*demos()).generated.states
        context = net.backbone.encode(*demos())
        shorter = net.generator(net.backbone, context, type(net.shape).of(layers=2)).states
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[:, :2], shorter, atol=1e-5, rtol=1e-5)


def test_hypertuning_tokens_see_each_other():
    model = causal_model()
    net = hypernet(model, NonAutoregressiveGenerator())
    assert net.generator.z.shape == (2, 32)  # p = 2 tokens, one group
    with torch.no_grad():
        before = net(*demos()).generated.states
        net.generator.z[-1] += 1.0
        after = net(*demos()).generated.states
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_forward_scores_the_answer_only_whatever_the_query_padding():
    model = causal_model()
    query = torch.tensor([[10, 11, 12, 1], [20, 21, 1, 0]])
    query_mask = (query != 0).long() | torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = torch.tensor([[30, 31, 1], [40, 1, -100]])
    out = main_forward(model, query, query_mask, labels)
    assert out.logits.shape == (2, 3, 384)
    # row 1 alone, unpadded: [20 21 1 | 40 1]; logits of positions 2, 3 predict the answer tokens
    alone = model(input_ids=torch.tensor([[20, 21, 1, 40, 1]])).logits
    torch.testing.assert_close(out.logits[1, :2], alone[0, 2:4], atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 384), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    generated = main_generate(model, query, query_mask, max_new_tokens=3)
    assert generated.shape == (2, 3)
    torch.testing.assert_close(out.logits[:, 0].argmax(-1), generated[:, 0])  # greedy = teacher-forced argmax


def test_lora_per_example_in_a_mixed_batch():
    model = causal_model()
    target = LoraTarget(rank=2, alpha=4.0, targets=["q_proj", "v_proj", "down_proj"])
    groups = {g.name: g for g in target.slot_groups(model)}
    assert list(groups) == [f"layers.{p}.{m}" for p in ("q_proj", "v_proj", "down_proj") for m in "AB"]
    assert (groups["layers.v_proj.B"].width, groups["layers.down_proj.A"].width) == (16, 64)
    target.prepare(model)
    params = {name: torch.randn(2, g.num_layers, g.rows, g.width) for name, g in groups.items()}
    query, mask, labels = torch.randint(3, 259, (2, 5)), torch.ones(2, 5, dtype=torch.long), torch.randint(3, 259, (2, 3))
    stock = main_forward(model, query, mask, labels).logits
    with target.applied(model, params):
        mixed = main_forward(model, query, mask, labels).logits
    for b in range(2):
        with target.applied(model, {k: v[b:b + 1] for k, v in params.items()}):
            alone = main_forward(model, query[b:b + 1], mask[b:b + 1], labels[b:b + 1]).logits
        torch.testing.assert_close(mixed[b:b + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed, stock)
    zero_b = {k: (torch.zeros_like(v) if k.endswith(".B") else v) for k, v in params.items()}
    with target.applied(model, zero_b):
        torch.testing.assert_close(main_forward(model, query, mask, labels).logits, stock)
    torch.testing.assert_close(main_forward(model, query, mask, labels).logits, stock)  # restored on exit
    with pytest.raises(HypergenError, match=r"peft\.targets: \['q'\] are not projections of LlamaForCausalLM"):
        LoraTarget(targets=["q"]).slot_groups(model)


def causal_recipe(tmp_path, steps: int) -> dict:
    recipe = embedded_recipe(tmp_path, steps=steps)
    recipe["main_model"] = {"tiny": {"architecture": "llama", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
                                     "num_heads": 4, "num_key_value_heads": 2}}
    recipe["hypernetwork"]["fusion_in_decoder"] = False
    recipe["peft"] = {"name": "lora", "rank": 2, "alpha": 4.0, "targets": ["q_proj", "v_proj"]}
    recipe["training"].update(checkpoint_every=None, lr=3e-3)
    recipe["evaluation"] = {"max_new_tokens": 4}
    return recipe


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    return root, train(root, causal_recipe(root, steps=8), root / "run")


def test_tiny_train_loss_falls(causal_run):
    _, run = causal_run
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_adapt_writes_a_peft_folder_with_hypergen_s_logits(causal_run, tmp_path):
    root, run = causal_run
    task = sorted((root / "embedded" / "tasks").glob("*.json"))[0]
    out = tmp_path / "adapter"
    result = CliRunner().invoke(main, ["adapt", "--run", str(run), "--task", str(task), "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(out / "base_model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    check = peft_model.load_adapter(str(out), adapter_name="check")
    assert check.missing_keys == [] and check.unexpected_keys == []
    peft_model.set_adapter("default")
    names = {n.split(".base_layer")[0] for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"} and len(names) == 2 * 2

    assembled = load_final(run)
    from hypergen.adapters.folder import generate_task_parameters
    from hypergen.data.tasks import load_task

    params, _ = generate_task_parameters(assembled, load_task(task))
    query, mask = torch.randint(3, 259, (1, 6)), torch.ones(1, 6, dtype=torch.long)
    labels = torch.randint(3, 259, (1, 4))
    method = assembled.method
    with method.target.applied(method.main_model, params.params):
        ours = main_forward(method.main_model, query, mask, labels).logits
    theirs = main_forward(peft_model, query, mask, labels).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["hart_qwen2.5-0.5b_sni.json", "hart_llama3.2-1b_sni.json"])
def test_full_size_causal_recipes_validate_and_fail_fast_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = REPO / "recipes" / name
    result = CliRunner().invoke(main, ["recipes", "validate", str(recipe)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["train", str(recipe), "-o", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2
    assert "main_model.name_or_path: cannot fetch" in result.output


# ------------------------------------------------------------------------------------------------------- prefix

def prefix_params(model, target, batch: int):
    torch.manual_seed(5)
    return {g.name: torch.randn(batch, g.num_layers, g.rows, g.width) for g in target.slot_groups(model)}


def test_zero_length_prefix_leaves_logits_unchanged():
    from hypergen.components.targets.prefix import PrefixTarget

    model = causal_model()
    query, mask, labels = torch.randint(3, 259, (2, 5)), torch.ones(2, 5, dtype=torch.long), torch.randint(3, 259, (2, 3))
    mask[1, 3:] = 0
    stock = main_forward(model, query, mask, labels).logits
    target = PrefixTarget(length=0)
    assert [(g.name, g.num_layers, g.width) for g in target.slot_groups(model)] == [
        ("layers.key", LAYERS, 16), ("layers.value", LAYERS, 16)]  # 2 key/value heads of width 8
    target.prepare(model)
    with target.applied(model, prefix_params(model, target, 2)):
        torch.testing.assert_close(main_forward(model, query, mask, labels).logits, stock, atol=1e-6, rtol=1e-5)


def test_prefixed_attention_is_attention_over_the_concatenated_keys_and_values():
    """Prefix keys unrotated, visible to every query; real keys rotated at their positions, causal."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    from hypergen.components.targets.prefix import PrefixTarget

    model = causal_model()
    target = PrefixTarget(length=2)
    target.prepare(model)
    params = prefix_params(model, target, 2)
    attention = model.model.layers[1].self_attn
    hidden = torch.randn(2, 4, 32)
    positions = torch.arange(4)[None].expand(2, -1)
    cos_sin = model.model.rotary_emb(hidden, positions)
    causal = torch.full((4, 4), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, 4, 4)
    with torch.no_grad(), target.applied(model, params):
        out, _ = attention(hidden, position_embeddings=cos_sin, attention_mask=causal)
        shape = (2, 4, 2, 8)
        q = attention.q_proj(hidden).view(2, 4, 4, 8).transpose(1, 2)
        k = attention.k_proj(hidden).view(shape).transpose(1, 2)
        v = attention.v_proj(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        prefix_k = params["layers.key"][:, 1].view(2, 2, 2, 8).transpose(1, 2)
        prefix_v = params["layers.value"][:, 1].view(2, 2, 2, 8).transpose(1, 2)
        keys = repeat_kv(torch.cat([prefix_k, k], 2), 2)
        values = repeat_kv(torch.cat([prefix_v, v], 2), 2)
        scores = q @ keys.transpose(-1, -2) / 8 ** 0.5 + torch.nn.functional.pad(causal, (2, 0))
        expected = attention.o_proj((scores.softmax(-1) @ values).transpose(1, 2).reshape(2, 4, 32))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_prefix_per_example_with_padding_and_generate_with_its_cache():
    from hypergen.components.targets.prefix import PrefixTarget

    model = causal_model()
    target = PrefixTarget(length=3)
    target.prepare(model)
    params = prefix_params(model, target, 2)
    query, mask = torch.randint(3, 259, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    labels = torch.randint(3, 259, (2, 3))
    with torch.no_grad(), target.applied(model, params):
        both = main_forward(model, query, mask, labels).logits
        generated = main_generate(model, query, mask, max_new_tokens=4)  # with the KV cache
        replay = main_forward(model, query, mask, generated).logits  # teacher-forced, no cache
    with torch.no_grad(), target.applied(model, {k: v[1:] for k, v in params.items()}):
        alone = main_forward(model, query[1:, :4], mask[1:, :4], labels[1:]).logits
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(replay.argmax(-1), generated)


def test_rank_classification_scores_the_choice_tokens():
    """FinetuneMethod.score (what P3 rank classification ranks by) is the sum of the choice tokens' log-probs
    after the query, as one forward pass over [query ; choice] gives them."""
    from hypergen.data.collate import Batch
    from hypergen.training.methods import FinetuneMethod

    model = causal_model()
    method = FinetuneMethod(copy.deepcopy(model), few_shot=False, eval_cfg=None)
    query = torch.tensor([[10, 11, 1], [10, 11, 1]])
    labels = torch.tensor([[30, 1], [40, 41]])
    batch = Batch(query[:1], torch.ones(1, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), query,
                  torch.ones_like(query), labels, ["t"], [("a",), ("b",)])
    scores = method.score(batch, None)
    for b in range(2):
        log_probs = model(input_ids=torch.cat([query[b], labels[b]])[None]).logits[0].log_softmax(-1)
        expected = log_probs[2, labels[b, 0]] + log_probs[3, labels[b, 1]]
        torch.testing.assert_close(scores[b], expected, atol=1e-5, rtol=1e-5)


def test_plot_attention_of_a_causal_run_reads_the_backbone_groups(causal_run, tmp_path):
    _, run = causal_run  # HART on a 2-layer Llama: one group "layers", one row per layer
    out = tmp_path / "attention.png"
    result = CliRunner().invoke(main, ["plot", "attention", "--run", str(run), "--tasks", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["rows"] == {"layers": [[0], [1]]} and summary["row_labels"] == ["lay0", "lay1"]
    matrix = np.array(summary["matrix"])
    assert matrix.shape == (2, 2) and matrix[0, 1] < 1e-6  # row 0 (step 0) cannot see step 1
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    share = np.array(summary["generated_share"])  # the rest of each row's attention is on the demo tokens
    assert share.shape == (2,) and ((share > 0) & (share < 1)).all()


def test_adapt_then_predict_equals_eval_on_a_causal_lm(causal_run, tmp_path):
    root, run = causal_run
    name = (root / "embedded" / "splits" / "default" / "test_tasks.txt").read_text().split()[0]
    (tmp_path / "split.txt").write_text(name + "\n")
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--split", str(tmp_path / "split.txt"), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    out = tmp_path / "adapter"
    task = root / "embedded" / "tasks" / f"{name}.json"
    result = CliRunner().invoke(main, ["adapt", "--run", str(run), "--task", str(task), "--out", str(out)])
    assert result.exit_code == 0, result.output
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in expected))
    result = CliRunner().invoke(main, ["predict", "--adapter", str(out), "--input", str(queries), "--quiet"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(got) == len(expected) == 2 and [g["prediction"] for g in got] == [r["prediction"] for r in expected]
    from hypergen.adapters.folder import generate_task_parameters, load_adapter
    from hypergen.data.tasks import load_task

    assembled = load_final(run)
    params, _ = generate_task_parameters(assembled, load_task(task))
    loaded = load_adapter(out, copy.deepcopy(assembled.method.main_model))  # read back without peft
    assert sorted(loaded.params) == sorted(params.params)
    for group, value in params.params.items():
        torch.testing.assert_close(loaded.params[group], value)


# ------------------------------------------------------------------------------------- a hub-style tokenizer

def hub_style_folder(folder: Path) -> Path:
    """A local Llama folder as the hub has them: a byte-level BPE tokenizer with BOS "<s>" (added by its
    post-processor, as Llama's is) and EOS "</s>" (id 0, so that an all-zero LM head always predicts it), no pad
    token; a tiny LlamaConfig model naming the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["abc>cba ; hello world", "Input: x\nOutput: y"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=8, bos_token_id=1, eos_token_id=0, tie_word_embeddings=False))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hub_tokenizer_prompts_start_with_bos_once_targets_end_with_eos_generation_stops_at_eos(tmp_path):
    from hypergen.data.tasks import Example, Task
    from hypergen.recipe import parse_recipe
    from hypergen.runs.assembly import assemble

    recipe = causal_recipe(tmp_path, steps=1)
    recipe["main_model"] = {"name_or_path": str(hub_style_folder(tmp_path / "llama"))}
    assembled = assemble(parse_recipe(recipe))  # loaded through main_model.name_or_path
    tokenizer, collator = assembled.tokenizer, assembled.collator
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert (bos, eos) == (1, 0) and tokenizer("ab")["input_ids"][0] == bos  # its own encoding adds BOS
    pairs = [Example("abc", ("cba",)), Example("hello", ("world wide",))]
    task = Task("t", "reverse", pairs, pairs, "test")
    batch = collator([(task, pairs)], demos_in_input=1.0)  # FT-Few-Shot: demos, separator, then the query
    for ids, mask in ((batch.input_ids, batch.attention_mask), (batch.demo_ids, batch.demo_mask)):
        for row, keep in zip(ids, mask):
            real = row[keep.bool()].tolist()
            assert real[0] == bos and real.count(bos) == 1 and eos not in real
    text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()], skip_special_tokens=True)
    assert text == "reverse | abc>cba ; hello>world wide | || abc>"  # compact demos, separator, query prompt
    for row in batch.labels:
        answer = row[row != -100].tolist()
        assert answer[-1] == eos and answer.count(eos) == 1 and bos not in answer
    assert tokenizer.decode(batch.labels[1][batch.labels[1] != -100]) == "world wide</s>"

    model = assembled.method.main_model
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit equal: greedy picks id 0, the EOS
    generated = main_generate(model, batch.input_ids, batch.attention_mask, max_new_tokens=5)
    assert generated.tolist() == [[eos], [eos]]  # stopped at EOS, not 5 tokens


def test_finetune_then_hart_on_the_fine_tuned_llama(tmp_path):
    """The causal demo's chain at a micro size: a finetune run of a tiny Llama ([query ; answer], demos in half of
    the inputs), then HART whose main_model.name_or_path is that run's model/ folder (as tiny_hart_llama.json
    names runs/demo/llama-main/model). HART starts as that frozen model (LoRA's B generated as zero) and its 4 steps
    move the adapter off it; that the loss falls is test_tiny_train_loss_falls' (4 steps from an identity start are
    within the noise between batches: 5.46 -> 5.65 here)."""
    recipe = causal_recipe(tmp_path, steps=4)
    finetune = {"kind": "finetune", "main_model": recipe["main_model"], "data": recipe["data"],
                "training": {**recipe["training"], "steps": 4}, "train_demos_fraction": 0.5}
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps(finetune))
    result = CliRunner().invoke(main, ["finetune", str(path), "-o", str(tmp_path / "main"), "--quiet", "--no-eval"])
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "main" / "model"
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.model_type == "llama"
    recipe["main_model"] = {"name_or_path": str(model_dir)}
    run = train(tmp_path, recipe, tmp_path / "hart")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    method = load_final(run).method
    assert method.main_model.config.model_type == "llama"
    ids = torch.randint(3, 259, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        params = method.module(ids, torch.ones_like(ids)).params
    assert all(torch.count_nonzero(v) > 0 for k, v in params.items() if k.endswith(".B"))  # trained off B = 0
