"""Reliability: a training process killed with SIGKILL resumes exactly; checkpoints are atomic and verified;
non-finite losses/gradients never reach the weights; bad input is one line and exit status 2; no pickle; a broken
plugin is a warning. The kills use the ``HYPERGEN_FAULT`` testing hook (hypergen/training/faults.py)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from hypergen.cli import main
from hypergen.training.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from hypergen.training.methods import HypernetMethod
from hypergen.training.utilisation import RATE_KEYS

from tests.training.test_training import embedded_recipe

REPO = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path, optimizer: str = "adamw", steps: int = 6) -> dict:
    """test_training's tiny embedded run, checkpointing every 2 steps, on one thread (for kill points)."""
    data = embedded_recipe(tmp_path, steps)
    data["training"].update({"optimizer": optimizer, "checkpoint_every": 2, "keep_checkpoints": 3, "threads": 1})
    return data


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def train_args(recipe_file: Path, out: Path) -> list[str]:
    return ["train", str(recipe_file), "-o", str(out), "--quiet", "--no-eval"]


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock rate fields."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in RATE_KEYS} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "hypernetwork.safetensors")), load_file(str(b / "hypernetwork.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert metrics(a) == metrics(b)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# -- 1. SIGKILL at a few points, then --resume: identical to the uninterrupted run -----------------------------------
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    files = {opt: write(tmp_path, opt, recipe(tmp_path, opt)) for opt in ("adamw", "adam8bit")}
    reference = {opt: tmp_path / f"ref-{opt}" for opt in files}
    assert cli(*train_args(files["adamw"], reference["adamw"])).exit_code == 0  # also writes the embedded tasks
    kills = [  # (optimizer, fault point)
        ("adamw", "after_step:3"),        # metrics has step 3, the newest checkpoint is step 2
        ("adamw", "during_checkpoint:4"),  # checkpoints/.step-00000004.tmp half-written
        ("adam8bit", "during_log:5"),      # half a line of step 5 at the end of metrics.jsonl
    ]
    procs = []
    for opt, fault in kills:  # real processes, killed by the hook; run side by side
        env = {**os.environ, "HYPERGEN_FAULT": fault}
        out = tmp_path / f"killed-{fault.replace(':', '-')}"
        procs.append((opt, fault, out, subprocess.Popen(
            [sys.executable, "-m", "hypergen.cli", *train_args(files[opt], out)], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    assert cli(*train_args(files["adam8bit"], reference["adam8bit"])).exit_code == 0
    for opt, fault, out, proc in procs:
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == -9, (fault, output)
        assert not (out / "hypernetwork.safetensors").exists()
        text = (out / "metrics.jsonl").read_text()
        if fault == "after_step:3":
            assert [c.name for c in list_checkpoints(out)] == ["step-00000002"] and '"step": 3' in text
        elif fault == "during_checkpoint:4":
            assert (out / "checkpoints" / ".step-00000004.tmp" / "model.safetensors").is_file()
            assert [c.name for c in list_checkpoints(out)] == ["step-00000002"]
        else:
            assert not text.endswith("\n") and '"step": 5' in text.splitlines()[-1]
        resumed = cli(*train_args(files[opt], out), "--resume")
        assert resumed.exit_code == 0, resumed.output
        assert_same_run(reference[opt], out)
        assert not list((out / "checkpoints").glob(".*")), "leftover temporary folders"
    # 8-bit Adam really ran 8-bit (its quantized state went through the checkpoint)
    state = json.loads((reference["adam8bit"] / "checkpoints" / "step-00000004" / "optimizer.json").read_text())
    assert "__bnb_optimizer_quant_state__" in json.dumps(state)


# -- 2. checkpoints: temporary name + rename, checksums, fallback, keep-last-K, leftovers removed ---------------------
def test_checkpoints_are_atomic_verified_and_cleaned(tmp_path):
    (tmp_path / "checkpoints" / ".step-00000009.tmp").mkdir(parents=True)  # left by a killed save
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"w": torch.full((3,), float(step))}, {"o": torch.ones(1)},
                        {"step": step}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000004"]
    assert not list((tmp_path / "checkpoints").glob(".*"))
    newest = list_checkpoints(tmp_path)[-1]
    (newest / "state.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"step-00000004: state.safetensors does not match its checksum"):
        folder, weights, _, state = load_latest_checkpoint(tmp_path)
    assert folder.name == "step-00000003" and state == {"step": 3} and weights["w"].tolist() == [3.0] * 3
    assert {p.suffix for p in folder.iterdir()} == {".json", ".safetensors"}  # nothing pickled


# -- 3. non-finite loss / gradient: skipped (or stop), never in the weights or a checkpoint --------------------------
def test_nonfinite_loss_and_gradient_never_reach_weights(tmp_path, monkeypatch):
    original = HypernetMethod.loss

    def poisoned(self, batch, step):
        loss, parts = original(self, batch, step)
        if step == 1:
            return loss * float("nan"), parts  # non-finite loss at step 2
        if step == 2:  # finite loss (0 added) whose gradient is NaN, at step 3
            first = next(self.module.parameters())
            return loss + torch.sqrt((first * 0).sum()), parts
        return loss, parts

    monkeypatch.setattr(HypernetMethod, "loss", poisoned)
    data = recipe(tmp_path, steps=4)
    out = tmp_path / "skip"
    result = cli(*train_args(write(tmp_path, "skip", data), out))
    assert result.exit_code == 0, result.output
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1]["loss"] is None and "non-finite loss" in records[1]["skipped"]
    assert records[2]["loss"] is None and "non-finite gradient" in records[2]["skipped"]
    assert all(isinstance(records[i]["loss"], float) for i in (0, 3))
    for folder in list_checkpoints(out):
        assert all(torch.isfinite(t).all() for t in load_file(str(folder / "model.safetensors")).values())
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "hypernetwork.safetensors")).values())

    data["training"]["on_nonfinite"] = "stop"
    out = tmp_path / "stop"
    result = cli(*train_args(write(tmp_path, "stop", data), out))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("error: step 2: non-finite loss (nan); stopped (training.on_nonfinite is 'stop')")
    assert not list_checkpoints(out) and not (out / "hypernetwork.safetensors").exists()

    # weights that did turn non-finite are never checkpointed
    monkeypatch.setattr(HypernetMethod, "loss", original)
    step = torch.optim.AdamW.step

    def corrupting_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", corrupting_step)
    out = tmp_path / "corrupt"
    result = cli(*train_args(write(tmp_path, "corrupt", recipe(tmp_path, steps=4)), out))
    assert result.exit_code == 2 and "refusing to write a checkpoint" in result.output
    assert not list_checkpoints(out) and not list((out / "checkpoints").glob(".*"))


# -- 4. bad input: one line naming file, field, expectation; exit 2; no run folder ------------------------------------
def _task_folder(tmp_path: Path, content: str) -> str:
    folder = tmp_path / f"data-{abs(hash(content))}"
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "good.json").write_text(json.dumps({"Definition": "d", "Instances": [
        {"input": "a", "output": ["b"]}]}))
    (folder / "tasks" / "broken.json").write_text(content)
    return str(folder)


def _set(path: str, value):
    def mutate(data, tmp_path):
        node = data
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value(tmp_path) if callable(value) else value
    return mutate


def _sni(content: str):
    def mutate(data, tmp_path):
        data["data"].update(source="sni", path=_task_folder(tmp_path, content))
    return mutate


BAD_INPUTS = [  # (name, change to the recipe, what the one line must contain)
    ("wrong type", _set("training.steps", "ten"), ["training.steps", "valid integer", "'ten'"]),
    ("unknown key", _set("training.stepz", 3), ["training.stepz: unknown key"]),
    ("unknown component", _set("hypernetwork.generator", {"name": "nope"}),
     ["hypernetwork.generator.name", "'nope'", "autoregressive.v1"]),
    ("decoder layers", _set("hypernetwork.decoder_layers", 5),
     ["hypernetwork.decoder_layers: 5 exceeds the main model's 2 decoder layers"]),
    ("prefix length 0", _set("peft.length", 0), ["peft.length: 0", "expected an integer >= 1"]),
    ("prefix no side", _set("peft", {"name": "prefix", "length": 2, "encoder": False, "decoder": False}),
     ["peft.encoder, peft.decoder", "expected at least one of them true"]),
    ("projector width", _set("hypernetwork.projector", {"name": "layerwise_mlp", "hidden": 0}),
     ["hypernetwork.projector: hidden", "expected a positive integer"]),
    ("data path missing", _set("data", lambda t: {"source": "sni", "path": str(t / "nowhere")}),
     ["data.path", "nowhere does not exist"]),
    ("model path missing", _set("main_model", lambda t: {"name_or_path": str(t / "nomodel")}),
     ["main_model.name_or_path", "does not exist"]),
    ("task not JSON", _sni('{"Definition": '), ["broken.json: not valid JSON"]),
    ("task empty", _sni(""), ["broken.json: file is empty"]),
    ("task no definition", _sni(json.dumps({"Instances": [{"input": "a", "output": "b"}]})),
     ["broken.json: field 'Definition' is missing"]),
    ("task no instances", _sni(json.dumps({"Definition": "x", "Instances": []})),
     ["broken.json: field 'Instances' is an empty list"]),
]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    for name, mutate, expected in BAD_INPUTS:
        data = copy.deepcopy(recipe(tmp_path, steps=1))
        mutate(data, tmp_path)
        file = write(tmp_path, re.sub(r"\W", "_", name), data)
        out = tmp_path / "runs" / file.stem
        result = cli(*train_args(file, out))
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, result.output)
        for part in expected:
            assert part in lines[0], (name, lines[0])
        if "task" not in name:
            assert lines[0].startswith(f"error: {file}: "), (name, lines[0])
        assert not out.exists(), name
    # non-JSON recipe, missing recipe, an output folder holding another run
    broken = tmp_path / "broken.json"
    broken.write_text('{"main_model": ')
    assert cli(*train_args(broken, tmp_path / "r")).output.startswith(f"error: {broken}: not valid JSON")
    assert "recipe file not found" in cli(*train_args(tmp_path / "missing.json", tmp_path / "r")).output
    good = write(tmp_path, "good", recipe(tmp_path, steps=1))
    assert cli(*train_args(good, tmp_path / "run")).exit_code == 0
    other = write(tmp_path, "other", {**recipe(tmp_path, steps=1), "description": "another"})
    refused = cli(*train_args(other, tmp_path / "run"))
    assert refused.exit_code == 2 and "already holds a run" in refused.output
    refused = cli(*train_args(other, tmp_path / "run"), "--resume")
    assert refused.exit_code == 2 and "different recipe" in refused.output
    debug = CliRunner().invoke(main, ["--debug", *train_args(broken, tmp_path / "r")])
    assert debug.exception is not None and not isinstance(debug.exception, SystemExit)  # --debug: the exception


# -- 5. no pickle anywhere ---------------------------------------------------------------------------------------------
def test_no_pickle_in_hypergen():
    for file in sorted((REPO / "hypergen").rglob("*.py")):
        text = file.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), file
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (file, call)
        assert "pickle.load" not in text and "np.load(" not in text, file


# -- 6. a broken plugin: a warning naming its package; everything else still works ------------------------------------
def test_broken_plugin_warns_and_builtins_still_listed(tmp_path):
    info = tmp_path / "site" / "broken_hypergen_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-hypergen-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hypergen_generators]\nbroken = broken_hypergen_plugin_missing:Gen\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "hypergen.cli", "registry", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("autoregressive.v1", "non_autoregressive.v1", "layerwise_mlp.v1", "local_consistency.v1",
                 "prefix.v1"):
        assert name in result.stdout
    assert "broken" not in result.stdout
    assert "plugin 'broken-hypergen-plugin' failed to load its generator 'broken'" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
