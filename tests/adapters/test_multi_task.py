"""Queries of several tasks in one batch (issue 28): `hypergen predict --adapter A --adapter B` and
`hypergen.predict_many` stack the adapters and give each example its adapter's parameters; the predictions equal
each adapter's own `predict`, one generate per batch."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import hypergen
from hypergen.adapters.stack import AdapterSet
from hypergen.cli import main
from hypergen.errors import HypergenError
from tests.models.test_causal import causal_recipe
from tests.training.test_training import embedded_recipe, train

QUERIES = ["ab", "7", "hello there", "xyz", "q", "1 2 3", "abcabc", "zz"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def export(run: Path, demos: Path, out: Path) -> Path:
    """`hypergen adapt` from a task file (.json) or a demos file (.jsonl)."""
    result = invoke("adapt", "--run", run, "--task" if demos.suffix == ".json" else "--demos", demos, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def causal_adapters(tmp_path_factory):
    """A tiny causal LoRA run (no fusion) and two of its tasks' adapter folders; b's LoRA is scaled up 30x in
    place so that the two adapters decode differently (8 tiny steps barely move the model)."""
    root = tmp_path_factory.mktemp("many")
    run = train(root, causal_recipe(root, steps=8), root / "run")
    tasks = sorted((root / "embedded" / "tasks").glob("*.json"))
    folders = {name: export(run, task, root / name) for name, task in zip(("a", "b"), tasks[:2])}
    weights = folders["b"] / "adapter_model.safetensors"
    save_file({k: v * 30 if "lora_B" in k else v for k, v in load_file(str(weights)).items()}, str(weights))
    return run, tasks, folders


@pytest.fixture(scope="module")
def prefix_adapters(tmp_path_factory):
    """A tiny T5 prefix run with fusion-in-decoder, and adapters of two tasks whose demos differ in length."""
    root = tmp_path_factory.mktemp("many-t5")
    recipe = embedded_recipe(root, steps=2)
    recipe["evaluation"] = {"max_new_tokens": 5}
    recipe["training"]["checkpoint_every"] = None
    run = train(root, recipe, root / "run")
    task = sorted((root / "embedded" / "tasks").glob("*.json"))[0]
    short = root / "short.jsonl"
    short.write_text('{"input": "ab", "output": "abx"}\n{"input": "7", "output": "7x"}\n')
    return run, {"a": export(run, task, root / "a"), "b": export(run, short, root / "b")}


def mixed_queries(names: list[str]) -> list[tuple[str, str]]:
    """QUERIES, each given to the adapters in turn (so that every batch mixes them)."""
    return [(names[i % len(names)], q) for i, q in enumerate(QUERIES)]


def alone(folders: dict[str, Path], queries: list[tuple[str, str]], tmp_path: Path) -> list[str]:
    """Each adapter's own `hypergen predict` on its own queries, put back in the queries' order."""
    predictions: dict[int, str] = {}
    for name, folder in folders.items():
        mine = [i for i, (n, _) in enumerate(queries) if n == name]
        path = tmp_path / f"{name}-alone.jsonl"
        path.write_text("".join(json.dumps({"input": queries[i][1]}) + "\n" for i in mine))
        result = invoke("predict", "--adapter", folder, "--input", path, "--quiet")
        assert result.exit_code == 0, result.output
        for i, line in zip(mine, result.stdout.splitlines()):
            predictions[i] = json.loads(line)["prediction"]
    return [predictions[i] for i in range(len(queries))]


def predict_mixed(folders: dict[str, Path], queries: list[tuple[str, str]], tmp_path: Path, monkeypatch,
                  batch_size: int = 3) -> list[dict]:
    """`hypergen predict` with every adapter at once; checks that each batch is one generate call."""
    calls = []
    original = AdapterSet.generate
    monkeypatch.setattr(AdapterSet, "generate", lambda self, model, rows, *a, **k: (
        calls.append(rows.tolist()), original(self, model, rows, *a, **k))[1])
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"input": q, "adapter" if i % 2 else "task": n}) + "\n"
                            for i, (n, q) in enumerate(queries)))
    args = [a for name, folder in folders.items() for a in ("--adapter", f"{name}={folder}")]
    out = tmp_path / "mixed-out.jsonl"
    result = invoke("predict", *args, "--input", path, "--output", out, "--batch-size", batch_size, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(calls) == math.ceil(len(queries) / batch_size) and all(len(set(rows)) > 1 for rows in calls)
    monkeypatch.undo()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_mixed_batches_equal_each_causal_lora_adapter_alone(causal_adapters, tmp_path, monkeypatch):
    _, _, folders = causal_adapters
    queries = mixed_queries(list(folders))
    got = predict_mixed(folders, queries, tmp_path, monkeypatch)
    assert [(g["adapter"], g["input"]) for g in got] == queries
    assert [g["prediction"] for g in got] == alone(folders, queries, tmp_path)
    # the adapters are not interchangeable: all queries through one adapter predict otherwise
    swapped = [("b" if n == "a" else "a", q) for n, q in queries]
    assert [g["prediction"] for g in predict_mixed(folders, swapped, tmp_path, monkeypatch)] != \
        [g["prediction"] for g in got]


def test_mixed_batches_pad_fusion_states_of_t5_prefix_adapters(prefix_adapters, tmp_path, monkeypatch):
    _, folders = prefix_adapters
    lengths = [load_file(str(f / "fusion.safetensors"))["states"].shape[0] for f in folders.values()]
    assert lengths[0] != lengths[1]  # the shorter one is padded and masked in the stack
    queries = mixed_queries(list(folders))
    got = predict_mixed(folders, queries, tmp_path, monkeypatch)
    assert [g["prediction"] for g in got] == alone(folders, queries, tmp_path)


def test_predict_many_from_python(causal_adapters, tmp_path, monkeypatch):
    run, tasks, folders = causal_adapters
    queries = mixed_queries(["b", "a"])
    expected = [g["prediction"] for g in predict_mixed(folders, queries, tmp_path, monkeypatch, batch_size=16)]
    assert hypergen.predict_many(folders, queries, batch_size=5) == expected  # folders, other batches
    net = hypergen.HyperNetwork.from_pretrained(run)
    adapters = dict(zip(("a", "b"), net.adapt(tasks[:2])))
    in_memory = hypergen.predict_many(adapters, queries)
    own = {n: a.generate([q for m, q in queries if m == n]) for n, a in adapters.items()}
    assert in_memory == [own[n].pop(0) for n, _ in queries]  # each TaskAdapter alone
    saved = {n: a.save_pretrained(tmp_path / "saved" / n) for n, a in adapters.items()}
    assert hypergen.predict_many(saved, queries) == in_memory  # the same prompt and settings as their folders
    with pytest.raises(HypergenError, match=r"queries\[1\] names adapter 'c'"):
        hypergen.predict_many(adapters, [("a", "x"), ("c", "y")])
    with pytest.raises(HypergenError, match="not both"):
        hypergen.predict_many({"a": adapters["a"], "b": folders["b"]}, queries)


def one_line_error(result, *needles) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_bad_inputs_and_mismatched_adapters_fail_in_one_line(causal_adapters, tmp_path):
    _, _, folders = causal_adapters
    args = ["--adapter", f"a={folders['a']}", "--adapter", folders["b"]]  # the second named by its folder: "b"
    out = tmp_path / "out.jsonl"
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"input": "x", "adapter": "a"}\n{"input": "y", "task": "c"}\n')
    one_line_error(invoke("predict", *args, "--input", queries, "--output", out),
                   f"{queries}: line 2: unknown adapter 'c'", "a, b")
    queries.write_text('{"input": "x", "adapter": "a"}\n\n{"input": "y"}\n')
    one_line_error(invoke("predict", *args, "--input", queries, "--output", out), "line 3: names no adapter")
    queries.write_text('{"input": "x", "adapter": "a", "task": "b"}\n')
    one_line_error(invoke("predict", *args, "--input", queries, "--output", out), "line 1: 'adapter' and 'task'")
    one_line_error(invoke("predict", "--adapter", folders["a"], "--adapter", f"a={folders['b']}", "--input",
                          queries), "two adapters are named 'a'")
    assert not out.exists()

    queries.write_text('{"input": "x", "adapter": "a"}\n{"input": "y", "adapter": "other"}\n')
    prompt = shutil.copytree(folders["b"], tmp_path / "other")  # another prompt setting
    settings = json.loads((prompt / "hypergen_adapter.json").read_text())
    (prompt / "hypergen_adapter.json").write_text(json.dumps({**settings, "max_input_length": 99}))
    one_line_error(invoke("predict", "--adapter", folders["a"], "--adapter", prompt, "--input", queries, "--output",
                          out), "adapters 'a' and 'other'", "max_input_length 16 vs 99")
    model = shutil.copytree(folders["b"], tmp_path / "model" / "other")  # its own saved main model differs
    config = json.loads((model / "base_model" / "config.json").read_text())
    (model / "base_model" / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.5}))
    adapter_config = json.loads((model / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(model / "base_model")
    (model / "adapter_config.json").write_text(json.dumps(adapter_config))
    one_line_error(invoke("predict", "--adapter", folders["a"], "--adapter", model, "--input", queries, "--output",
                          out), "adapters 'a' and 'other'", f"main model {folders['a'] / 'base_model'} vs")
    rank = tmp_path / "rank" / "other"  # the same projections at rank 1
    shutil.copytree(folders["b"], rank)
    weights = {k: (v[:1] if "lora_A" in k else v[:, :1]).contiguous()
               for k, v in load_file(str(rank / "adapter_model.safetensors")).items()}
    save_file(weights, str(rank / "adapter_model.safetensors"))
    config = json.loads((rank / "adapter_config.json").read_text())
    (rank / "adapter_config.json").write_text(json.dumps({**config, "r": 1}))
    one_line_error(invoke("predict", "--adapter", folders["a"], "--adapter", rank, "--input", queries, "--output",
                          out, "--quiet"), "adapters 'a' and 'other'", "lora rank 2 vs 1")
    assert not out.exists()
