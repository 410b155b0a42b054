"""Prompts for an instruction-tuned causal LM (``data.prompt``): the chat template's user turn and reply, "auto"
keeping today's plain prompts where there is no template; and the frozen main model's baselines of ``hypergen eval
--frozen`` (zero_shot, instruction, in_context)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import ByT5Tokenizer

from hypergen.cli import main
from hypergen.data.chat import end_of_turn_id, stop_at_end_of_turn
from hypergen.data.collate import Collator
from hypergen.data.format import DEMOS_QUERY_SEPARATOR, demos_text
from hypergen.data.tasks import Example, Task
from hypergen.errors import RecipeError
from hypergen.evaluation.frozen import frozen_collator
from hypergen.evaluation.metrics import score_predictions
from hypergen.models.adapted import main_forward, main_generate
from hypergen.recipe import Data, parse_recipe

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "You are a test."
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
            "{{ '<|im_start|>system\n" + SYSTEM + "' + END + '\n' }}{% endif %}"
            "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + END + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|im_end|>", "<s>", "<|im_start|>", "<pad>", "<|eot|>"]  # ids 0..4; <|im_end|> is eos (id 0)


def chat_tokenizer(end: str = "<|im_end|>"):
    """A byte-level BPE tokenizer (merges learnt from a few lines) whose post-processor adds BOS "<s>" (as Llama
    3's does), eos "<|im_end|>" (id 0), pad "<pad>", and a SmolLM2-style chat template (a default system turn)
    that starts with BOS and closes every turn with ``end``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["Input: abc\nOutput: cba", "Definition: reverse the word.", "hello world, user"],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                        pad_token="<pad>")
    tokenizer.chat_template = TEMPLATE.replace("END", repr(end))
    return tokenizer


def by_hand(content: str, end: str = "<|im_end|>") -> str:
    """What the template renders for one user turn with the generation prompt, written out."""
    return f"<s><|im_start|>system\n{SYSTEM}{end}\n<|im_start|>user\n{content}{end}\n<|im_start|>assistant\n"


def template_ids(tokenizer, content: str) -> list[int]:
    out = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=1,
                                         eos_token_id=0, pad_token_id=3, tie_word_embeddings=False))
    return model.eval()


TASK = Task("t", "Reverse the word.", [Example("abc", ("cba",)), Example("hello", ("olleh",)),
                                       Example("xy", ("yx",))], [Example("world", ("dlrow",)), Example("ab", ("ba",))],
            "test")


def real(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


# ------------------------------------------------------------------------------------------------ chat prompts

def test_chat_inputs_are_the_template_s_user_turn_and_only_the_reply_is_labelled():
    tokenizer = chat_tokenizer()
    collator = Collator(tokenizer, Data(source="embedded"), causal=True)  # "auto": a causal LM with a template
    assert (collator.prompt, collator.end_of_turn) == ("chat", 0)
    batch = collator([(TASK, TASK.instances)])
    for row, (example, query) in enumerate(zip(TASK.instances, ("world", "ab"))):
        content = f"Input: {query}\nOutput:"
        ids = real(batch.input_ids[row], batch.attention_mask[row])
        assert ids == template_ids(tokenizer, content) == tokenizer(by_hand(content), add_special_tokens=False)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1  # the template's, once
        labels = batch.labels[row]
        assert labels[labels != -100].tolist() == tokenizer(example.outputs[0], add_special_tokens=False)["input_ids"] + [0]
        assert (labels == -100).sum() == labels.shape[0] - len(labels[labels != -100])  # -100 = padding only
        assert labels[: (labels != -100).sum()].ne(-100).all()
    assert tokenizer.decode(batch.labels[0][batch.labels[0] != -100]) == "dlrow<|im_end|>"
    # the demos before the query (FT-Few-Shot, frozen in_context): in the same user turn, before the separator
    batch = collator([(TASK, TASK.instances[:1])], demos_in_input=1.0)
    content = collator.demos(TASK) + DEMOS_QUERY_SEPARATOR["sni"] + "Input: world\nOutput:"
    assert batch.input_ids[0].tolist() == template_ids(tokenizer, content)
    # the hypernetwork still reads [BOS] demos: plain text, no template
    assert real(batch.demo_ids[0], batch.demo_mask[0]) == [1] + tokenizer(collator.demos(TASK), add_special_tokens=False)["input_ids"]


def test_chat_inputs_are_cut_as_plain_ones_demos_first_never_the_query_beyond_its_limit():
    tokenizer = chat_tokenizer()
    data = Data(source="embedded", max_demo_length=120, max_input_length=3, max_target_length=2)
    collator = Collator(tokenizer, data, causal=True)
    long_query = Example("hello world hello", ("cba",))
    batch = collator([(TASK, [long_query])], demos_in_input=1.0)
    text = tokenizer.decode(real(batch.input_ids[0], batch.attention_mask[0]))
    user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    query = tokenizer.decode(tokenizer(long_query.input, add_special_tokens=False)["input_ids"][:3])
    assert user.endswith(DEMOS_QUERY_SEPARATOR["sni"] + f"Input: {query}\nOutput:") and query != long_query.input
    demos = user[: -len(DEMOS_QUERY_SEPARATOR["sni"] + f"Input: {query}\nOutput:")]
    assert demos and collator.demos(TASK).startswith(demos) and len(demos) < len(collator.demos(TASK))
    assert len(real(batch.input_ids[0], batch.attention_mask[0])) <= 120 + 3 + 2  # the budget (+ re-merges)
    labels = batch.labels[0]
    assert labels.tolist()[-1] == 0 and len(labels) == 2  # cut answer, end-of-turn kept


def test_main_forward_loss_is_the_cross_entropy_of_the_reply_tokens_only():
    tokenizer = chat_tokenizer()
    model = tiny_llama(len(tokenizer))
    batch = Collator(tokenizer, Data(source="embedded", prompt="chat"), causal=True)([(TASK, TASK.instances)])
    loss = main_forward(model, batch.input_ids, batch.attention_mask, batch.labels).loss
    terms = []
    for row in range(2):  # each example alone, unpadded: [chat prompt ; reply <|im_end|>]
        prompt = real(batch.input_ids[row], batch.attention_mask[row])
        reply = batch.labels[row][batch.labels[row] != -100].tolist()
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([prompt + reply])).logits[0].log_softmax(-1)
        terms += [-log_probs[len(prompt) - 1 + t, token] for t, token in enumerate(reply)]
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def test_auto_keeps_today_s_plain_prompts_without_a_template():
    """ByT5 (no chat template): the causal prompt is "[BOS] Input: x\\nOutput: " then "answer [EOS]" (ByT5 has no
    BOS), byte for byte as before; a T5 and a causal LM with a template but prompt "plain" are plain too."""
    tokenizer = ByT5Tokenizer()
    byte_ids = lambda text: [b + 3 for b in text.encode("utf-8")]  # noqa: E731 - ByT5: byte + 3
    collator = Collator(tokenizer, Data(source="embedded"), causal=True)
    assert collator.prompt == "plain"
    batch = collator([(TASK, TASK.instances[:1])])
    assert batch.input_ids[0].tolist() == byte_ids("Input: world\nOutput: ")
    assert batch.labels[0].tolist() == byte_ids("dlrow") + [tokenizer.eos_token_id]
    few = collator([(TASK, TASK.instances[:1])], demos_in_input=1.0)
    assert few.input_ids[0].tolist() == byte_ids(collator.demos(TASK) + DEMOS_QUERY_SEPARATOR["sni"]
                                                 + "Input: world\nOutput: ")
    assert Collator(tokenizer, Data(source="embedded"), causal=False).prompt == "plain"
    assert Collator(chat_tokenizer(), Data(source="embedded"), causal=False).prompt == "plain"  # a T5
    plain = Collator(chat_tokenizer(), Data(source="embedded", prompt="plain"), causal=True)
    text = chat_tokenizer().decode(plain([(TASK, TASK.instances[:1])]).input_ids[0])
    assert plain.prompt == "plain" and text == "<s>Input: world\nOutput: "


def test_chat_without_a_template_or_a_causal_lm_is_one_line_naming_data_prompt(tmp_path):
    with pytest.raises(RecipeError, match=r"^data\.prompt: 'chat' needs a tokenizer with a chat template"):
        Collator(ByT5Tokenizer(), Data(source="embedded", prompt="chat"), causal=True)
    with pytest.raises(RecipeError, match=r"^data\.prompt: 'chat' needs a causal main model"):
        Collator(chat_tokenizer(), Data(source="embedded", prompt="chat"), causal=False)
    with pytest.raises(RecipeError, match=r"data\.prompt"):
        parse_recipe({"main_model": {"tiny": {}}, "data": {"source": "embedded", "prompt": "jinja"}})
    result = CliRunner().invoke(main, ["eval", "--recipe", str(REPO / "recipes" / "tiny_finetune_llama.json"),
                                       "--frozen", "zero_shot", "--set", "data.prompt=chat",
                                       "--set", f"data.path={tmp_path / 'embedded'}", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "data.prompt: 'chat' needs a tokenizer" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_an_end_of_turn_token_other_than_eos_ends_the_labels_and_stops_generation():
    tokenizer = chat_tokenizer(end="<|eot|>")
    assert end_of_turn_id(tokenizer) == 4 and tokenizer.eos_token_id == 0
    assert end_of_turn_id(chat_tokenizer()) == 0
    collator = Collator(tokenizer, Data(source="embedded"), causal=True)
    batch = collator([(TASK, TASK.instances)])
    assert [row[row != -100].tolist()[-1] for row in batch.labels] == [4, 4]
    assert real(batch.input_ids[0], batch.attention_mask[0]) == tokenizer(
        by_hand("Input: world\nOutput:", end="<|eot|>"), add_special_tokens=False)["input_ids"]
    model = tiny_llama(len(tokenizer))
    head = torch.nn.Linear(32, len(tokenizer), bias=True)  # every step's argmax: <|eot|>
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()[4] = 1.0
    model.lm_head = head
    assert main_generate(model, batch.input_ids, batch.attention_mask, max_new_tokens=4).shape == (2, 4)
    stop_at_end_of_turn(model, collator)
    assert model.generation_config.eos_token_id == [0, 4]
    generated = main_generate(model, batch.input_ids, batch.attention_mask, max_new_tokens=4)
    assert generated.tolist() == [[4], [4]]  # stopped at the end of the turn
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == ["", ""]


def test_runs_and_adapters_written_before_the_prompt_setting_stay_plain(tmp_path):
    from hypergen.adapters.folder import DEFAULT_SETTINGS
    from hypergen.runs.folder import legacy_prompt, read_run

    recipe = {"main_model": {"tiny": {}}, "data": {"source": "embedded"}}
    assert legacy_prompt(recipe)["data"]["prompt"] == "plain" and "prompt" not in recipe["data"]
    assert legacy_prompt({**recipe, "data": {"source": "embedded", "prompt": "auto"}})["data"]["prompt"] == "auto"
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert read_run(tmp_path).data.prompt == "plain"
    assert DEFAULT_SETTINGS["prompt"] == "plain"


# ------------------------------------------------------------------------------ a chat model end to end

def chat_folder(folder: Path) -> Path:
    tokenizer = chat_tokenizer()
    model = tiny_llama(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_chat_run_trains_evaluates_and_its_adapter_predicts_in_the_same_prompt(tmp_path):
    from hypergen.runs.folder import load_final
    from tests.models.test_causal import causal_recipe
    from tests.training.test_training import train

    recipe = causal_recipe(tmp_path, steps=2)
    recipe["main_model"] = {"name_or_path": str(chat_folder(tmp_path / "chat"))}
    recipe["data"]["demo_style"] = "sni"
    run = train(tmp_path, recipe, tmp_path / "run")
    assembled = load_final(run)
    assert assembled.collator.prompt == "chat" and json.loads((run / "recipe.json").read_text())["data"]["prompt"] == "auto"
    name = (tmp_path / "embedded" / "splits" / "default" / "test_tasks.txt").read_text().split()[0]
    (tmp_path / "split.txt").write_text(name + "\n")
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--split", str(tmp_path / "split.txt"), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert not any("<|im" in r["prediction"] or "assistant\n" in r["prediction"] for r in expected)
    out = tmp_path / "adapter"
    task = tmp_path / "embedded" / "tasks" / f"{name}.json"
    result = CliRunner().invoke(main, ["adapt", "--run", str(run), "--task", str(task), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "hypergen_adapter.json").read_text())["prompt"] == "chat"
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in expected))
    result = CliRunner().invoke(main, ["predict", "--adapter", str(out), "--input", str(queries), "--quiet"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["prediction"] for line in result.stdout.splitlines()]
    assert len(got) == len(expected) == 2 and got == [r["prediction"] for r in expected]
    settings = json.loads((out / "hypergen_adapter.json").read_text())
    settings["prompt"] = "plain"  # the same adapter read with plain prompts: other inputs, so (here) other outputs
    (out / "hypergen_adapter.json").write_text(json.dumps(settings))
    result = CliRunner().invoke(main, ["predict", "--adapter", str(out), "--input", str(queries), "--quiet"])
    assert result.exit_code == 0 and [json.loads(x)["prediction"] for x in result.stdout.splitlines()] != got


# ---------------------------------------------------------------------------------- frozen baselines

@pytest.mark.parametrize("chat", [False, True])
def test_the_frozen_modes_put_what_they_should_before_the_query(chat):
    tokenizer = chat_tokenizer() if chat else ByT5Tokenizer()
    model = tiny_llama(len(tokenizer) if chat else 384)
    data = Data(source="embedded", num_positive=3, include_definition=False)  # the recipe's own demos: overridden
    texts = {}
    for mode in ("zero_shot", "instruction", "in_context"):
        collator, demos_in_input = frozen_collator(tokenizer, model, data, mode)
        batch = collator([(TASK, TASK.instances[:1])], demos_in_input=demos_in_input)
        texts[mode] = tokenizer.decode(real(batch.input_ids[0], batch.attention_mask[0]), skip_special_tokens=True)
        assert texts[mode].endswith("Input: world\nOutput:\nassistant\n" if chat else "Input: world\nOutput: ")
    assert "Reverse the word" not in texts["zero_shot"] and "abc" not in texts["zero_shot"]
    assert "Definition: Reverse the word." in texts["instruction"] and "Positive Example" not in texts["instruction"]
    assert texts["in_context"].count("Positive Example") == 2 and "Input: abc." in texts["in_context"]
    assert "Input: hello." in texts["in_context"] and "xy" not in texts["in_context"]  # the first two only
    assert demos_text(TASK, 2, True) in texts["in_context"] and "Definition: Reverse" in texts["in_context"]
    if chat:
        assert all(text.startswith("system\n" + SYSTEM) for text in texts.values())


def frozen_args(tmp_path, mode: str, *extra: str) -> list[str]:
    """``hypergen eval --frozen MODE`` of tiny_hart_llama.json made small: a 2-layer random Llama, the embedded
    tasks under ``tmp_path``, the test tasks listed in ``tmp_path/split.txt``, 2 instances, 3 new tokens."""
    return ["eval", "--recipe", str(REPO / "recipes" / "tiny_hart_llama.json"), "--frozen", mode,
            "--set", "main_model.name_or_path=null",
            "--set", 'main_model.tiny={"architecture": "llama", "d_model": 32, "d_kv": 8, "d_ff": 64, '
                     '"num_layers": 2, "num_heads": 4, "num_key_value_heads": 2}',
            "--set", f"data.path={tmp_path / 'embedded'}", "--set", "evaluation.max_new_tokens=3",
            "--set", "training.threads=1", "--split", str(tmp_path / "split.txt"), "--max-instances", "2",
            "--quiet", *extra]


def test_frozen_eval_writes_scores_of_its_predictions_that_compare_lists(tmp_path):
    from hypergen.data.synthetic import ensure_embedded_tasks

    ensure_embedded_tasks(tmp_path / "embedded", seed=0)
    names = (tmp_path / "embedded" / "splits" / "default" / "test_tasks.txt").read_text().split()[:2]
    (tmp_path / "split.txt").write_text("\n".join(names) + "\n")
    outs = {}
    for mode in ("zero_shot", "in_context"):
        out = tmp_path / mode
        result = CliRunner().invoke(main, frozen_args(tmp_path, mode, "-o", str(out)))
        assert result.exit_code == 0, result.output
        assert "overall" in result.output and f"scores written to {out / 'eval' / 'scores.json'}" in result.output
        scores = json.loads((out / "eval" / "scores.json").read_text())
        records = [json.loads(x) for x in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
        assert len(records) == 4 and {r["task"] for r in records} == set(names)
        assert scores == score_predictions(records)
        marker = json.loads((out / "frozen.json").read_text())
        assert (marker["mode"], marker["prompt"], marker["demos_in_input"]) == (mode, "plain", mode == "in_context")
        assert json.loads((out / "recipe.json").read_text())["main_model"]["tiny"]["d_model"] == 32
        outs[mode] = scores
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "zero_shot"), str(tmp_path / "in_context"),
                                       "--label", "frozen zero-shot"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("frozen zero-shot") and lines[2].startswith("in_context")
    assert f"{outs['in_context']['overall']['rougeL']:.2f}" in lines[2]
    # the same folder again: replaced in place; a folder that is not a frozen baseline: refused
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, frozen_args(tmp_path, "zero_shot", "-o", str(tmp_path / "foreign")))
    assert result.exit_code == 2 and "not a hypergen frozen-baseline folder" in result.output


@pytest.mark.parametrize("args, message", [
    (["--frozen", "few_shot", "--recipe", "tiny_hart"], "--frozen: 'few_shot' is not a frozen baseline"),
    (["--run", "RUN", "--recipe", "tiny_hart", "--frozen", "zero_shot"], "--run, --recipe: give exactly one"),
    ([], "--run, --recipe: give exactly one"),
    (["--recipe", "tiny_hart"], "--frozen: required with --recipe"),
    (["--recipe", "tiny_hart", "--frozen", "zero_shot", "--control", "none"], "--control: "),
    (["--run", "RUN", "--output", "x"], "--output: only with --frozen"),
    (["--run", "RUN", "--frozen", "zero_shot", "--set", "data.prompt=plain"], "--set: only with --recipe"),
])
def test_bad_frozen_options_are_one_line_naming_the_option(tmp_path, args, message):
    (tmp_path / "RUN").mkdir()
    args = [str(tmp_path / "RUN") if a == "RUN" else a for a in args]
    result = CliRunner().invoke(main, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {result.output.strip()[7:]}"]
    assert message in result.output


def test_frozen_with_a_run_scores_its_main_model_beside_it(tmp_path):
    from tests.models.test_causal import causal_recipe
    from tests.training.test_training import train

    recipe = causal_recipe(tmp_path, steps=1)
    run = train(tmp_path, recipe, tmp_path / "runs" / "hart")
    name = (tmp_path / "embedded" / "splits" / "default" / "test_tasks.txt").read_text().split()[0]
    (tmp_path / "split.txt").write_text(name + "\n")
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--frozen", "instruction", "--split",
                                       str(tmp_path / "split.txt"), "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "frozen-hart-instruction"
    marker = json.loads((out / "frozen.json").read_text())
    assert marker["run"] == str(run.resolve()) and marker["mode"] == "instruction"
    assert marker["main_model"] == json.loads((run / "recipe.json").read_text())["main_model"]
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == 2
    assert not (run / "eval").exists()  # the run's own scores are not touched
