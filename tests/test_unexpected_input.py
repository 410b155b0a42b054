"""Inputs nobody meant to give (issue 15), tested by class: output folders that are not hypergen's, recipe bytes
of any encoding and depth, non-finite numbers, component parameters of the wrong type, damaged files of every
kind hypergen reads, a full disk, two processes on one run, a dead run, resuming a finished run, the umask."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hypergen.cli import main
from hypergen.errors import HypergenError
from hypergen.folders import FolderLock
from hypergen.data.tasks import load_task
from hypergen.io import atomic_save_tensors, atomic_write_json, sha256
from hypergen.runs.folder import prepare_run_dir
from hypergen.training.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from hypergen.training.methods import HypernetMethod

from tests.training.test_reliability import recipe, train_args, write

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *parts: str) -> str:
    """The CLI failed with exit status 2 and exactly one line on stderr, starting with ``error:``, holding
    ``parts`` (stdout may hold progress lines, e.g. the skipped steps)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe file, finished run folder) of a 2-step tiny run, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("trained")
    file = write(tmp, "base", recipe(tmp, steps=2))
    result = cli(*train_args(file, tmp / "run"))
    assert result.exit_code == 0, result.output
    return file, tmp / "run"


# -- 1. --overwrite deletes only what hypergen wrote -------------------------------------------------------------------
def test_output_folders_not_hypergens_are_refused_and_never_deleted(tmp_path, trained):
    data = json.loads(trained[0].read_text())
    foreign = tmp_path / "photos"
    (foreign / "album").mkdir(parents=True)
    (foreign / "album" / "cat.jpg").write_bytes(b"\xff\xd8 precious")
    (foreign / "recipe.json").write_text("{}")  # even a recipe.json alone does not make it a run
    before = tree(foreign)
    for flags in ([], ["--overwrite"], ["--resume"], ["--overwrite", "--resume"]):
        with pytest.raises(HypergenError, match=r"photos is not empty \(album, recipe.json\) and is not a hypergen "
                                                r"run folder \(no hypergen-run.json\)"):
            prepare_run_dir(foreign, data, resume="--resume" in flags, overwrite="--overwrite" in flags)
        assert tree(foreign) == before
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(HypergenError, match="is a file, not a folder"):
        prepare_run_dir(a_file, data, resume=False, overwrite=True)
    # the CLI: train and adapt refuse the same folder in one line, before loading any model
    one_line_error(cli(*train_args(trained[0], foreign), "--overwrite"), "not a hypergen run folder")
    one_line_error(cli("adapt", "--run", trained[1], "--demos", _demos(tmp_path), "--out", foreign, "--overwrite"),
                   "--out:", "not a hypergen adapter folder (no hypergen_adapter.json)")
    assert tree(foreign) == before and a_file.read_text() == "x"


def test_overwrite_of_a_run_removes_only_hypergens_entries_and_follows_no_link(tmp_path, trained):
    data = json.loads(trained[0].read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("outside the run")
    run = tmp_path / "run"
    prepare_run_dir(run, data, resume=False, overwrite=False).release()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "notes.txt").write_text("mine")  # the user's own file inside a run folder
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "link").symlink_to(outside)  # a link inside a folder hypergen deletes
    (run / "eval").symlink_to(outside)  # a link in place of an entry hypergen deletes
    with pytest.raises(HypergenError, match="already holds a run"):
        prepare_run_dir(run, data, resume=False, overwrite=False)
    prepare_run_dir(run, data, resume=False, overwrite=True).release()
    assert sorted(p.name for p in run.iterdir()) == [".hypergen.lock", "hypergen-run.json", "notes.txt",
                                                     "recipe.json"]
    assert (run / "notes.txt").read_text() == "mine" and (outside / "keep.txt").read_text() == "outside the run"


# -- 2. recipe bytes: encodings, depth, NaN / infinity, wrong component types ------------------------------------------
def _validate(tmp_path: Path, name: str, payload: bytes, *extra: str):
    file = tmp_path / name
    file.write_bytes(payload)
    return cli("recipes", "validate", file, *extra)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_recipe_in_any_unicode_encoding_is_read(tmp_path, encoding):
    text = json.dumps(recipe(tmp_path, steps=1), ensure_ascii=False)
    result = _validate(tmp_path, "r.json", text.encode(encoding))
    assert result.exit_code == 0 and result.output.strip().endswith("ok (hypernetwork)"), result.output


@pytest.mark.parametrize("payload, expected", [
    (b"\x80\x81 not text", "not UTF-8, UTF-16 or UTF-32 text"),
    (b"\xff\xfe{\x00\x00", "not UTF-8, UTF-16 or UTF-32 text"),  # UTF-16 cut in the middle of a character
    (b"", "recipe is empty"),
    (b"   \n", "recipe is empty"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": ' * 50 + b"1" + b"}" * 50, "nested more than 32 levels deep"),
    (b'{"training": {"steps": ' + b"9" * 5000 + b"}}", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object at the top level, got list"),
])
def test_recipe_bytes_that_are_not_a_recipe_are_one_line(tmp_path, payload, expected):
    one_line_error(_validate(tmp_path, "bad.json", payload), f"{tmp_path / 'bad.json'}: ", expected)


@pytest.mark.parametrize("where, value", [
    ("training.lr", "NaN"), ("training.max_grad_norm", "Infinity"), ("training.weight_decay", "-Infinity"),
    ("training.lr", "1e999"), ("hypernetwork.regularizers.0.alpha", "NaN"), ("peft.length", "Infinity"),
    ("description", "[1, NaN]"),
])
def test_nonfinite_numbers_are_refused_anywhere_with_their_path(tmp_path, where, value):
    data = recipe(tmp_path, steps=1)
    marker = 12345.678
    node = data
    *parents, last = where.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = marker
    text = json.dumps(data).replace(str(marker), value)
    field = where if value != "[1, NaN]" else "description.1"
    one_line_error(_validate(tmp_path, "r.json", text.encode()), f"{field}: ", "not a finite number")
    # the same through --set, on a good recipe
    good = tmp_path / "good.json"
    good.write_text(json.dumps(recipe(tmp_path, steps=1)))
    one_line_error(cli("recipes", "validate", good, "--set", f"{where}={value}"), f"{field}: ",
                   "not a finite number")


@pytest.mark.parametrize("spec, expected", [
    ({"hypernetwork.regularizers": [{"name": "local_consistency", "alpha": "fast"}]},
     ["hypernetwork.regularizers.0.alpha: ", "valid number", "'fast'"]),
    ({"peft": {"name": "prefix", "length": "long"}}, ["peft.length: ", "valid integer", "'long'"]),
    ({"peft": {"name": "prefix", "length": 2.5}}, ["peft.length: ", "valid integer", "2.5"]),
    ({"peft": {"name": "lora", "targets": "qv"}}, ["peft.targets: expected", "list[str]", "'qv'"]),
    ({"peft": {"name": "lora", "targets": ["q", 7]}}, ["peft.targets: expected", "list[str]"]),
    ({"hypernetwork.generator": {"name": "autoregressive", "reverse": "maybe"}},
     ["hypernetwork.generator.reverse: ", "valid boolean", "'maybe'"]),
    ({"hypernetwork.generator": {"name": "autoregressive", "init_std": [1]}},
     ["hypernetwork.generator.init_std: ", "valid number"]),
])
def test_component_parameters_are_checked_against_their_type_hints(tmp_path, spec, expected):
    data = recipe(tmp_path, steps=1)
    for key, value in spec.items():
        section, _, name = key.partition(".")
        if name:
            data[section][name] = value
        else:
            data[section] = value
    one_line_error(_validate(tmp_path, "r.json", json.dumps(data).encode()), *expected)


# -- 3. damaged files: one line naming the file, exit 2, nothing written ---------------------------------------------
def _damage_weights(kind: str, path: Path) -> None:
    good = load_file(str(path))
    name = next(iter(good))
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "wrong shape":
        save_file({**good, name: torch.zeros(3, 3)}, str(path))
    elif kind == "wrong dtype":
        save_file({**good, name: good[name].to(torch.float16)}, str(path))
    elif kind == "another model":
        save_file({"encoder.other.weight": torch.zeros(2)}, str(path))
    elif kind == "a folder":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong shape", "wrong dtype", "another model",
                                    "a folder"])
def test_eval_and_adapt_on_damaged_final_weights(tmp_path, trained, damage):
    run = tmp_path / "run"
    _copy_run(trained[1], run)
    _damage_weights(damage, run / "hypernetwork.safetensors")
    before = tree(run)
    line = one_line_error(cli("eval", "--run", run, "--quiet"), str(run), "hypernetwork.safetensors")
    assert tree(run) == before, line
    one_line_error(cli("adapt", "--run", run, "--demos", _demos(tmp_path), "--out", tmp_path / "a", "--quiet"),
                   "hypernetwork.safetensors")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe\x00", b"[]", b'{"main_model": {"tiny": {}}, "data": 1}'])
def test_damaged_run_recipe_is_one_line(tmp_path, trained, content):
    run = tmp_path / "run"
    _copy_run(trained[1], run)
    (run / "recipe.json").write_bytes(content)
    one_line_error(cli("eval", "--run", run, "--quiet"), str(run / "recipe.json"))


def test_damaged_task_split_demos_and_query_files_are_one_line(tmp_path, trained):
    tasks = tmp_path / "data" / "tasks"
    tasks.mkdir(parents=True)
    good = {"Definition": "d", "Positive Examples": [{"input": "a", "output": "b"}],
            "Instances": [{"input": "a", "output": ["b"]}]}
    (tasks / "t_utf16.json").write_bytes(json.dumps(good).encode("utf-16"))  # read, like a UTF-16 recipe
    (tasks / "t_deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    one_line_error(cli("eval", "--run", trained[1], "--data", tmp_path / "data", "--quiet"),
                   "t_deep.json: nested too deeply")
    (tasks / "t_deep.json").unlink()
    assert load_task(tasks / "t_utf16.json").instances[0].outputs == ("b",)
    split = tmp_path / "split.txt"
    split.write_bytes(b"\x80\x81\x82")
    one_line_error(cli("eval", "--run", trained[1], "--data", tmp_path / "data", "--split", split, "--quiet"),
                   "split.txt: split file is not UTF-8 text")
    for content, expected in ((b"", "no demonstration pairs"), (b"[" * 5000 + b"]" * 5000, "line 1: nested too"),
                              (b'{"input": "a", "output": "b"}\n{"input": ', "line 2: not valid JSON"),
                              (b"\xfe\xff\xd8", "not UTF-16 text")):
        demos = tmp_path / "demos.jsonl"
        demos.write_bytes(content)
        one_line_error(cli("adapt", "--run", trained[1], "--demos", demos, "--out", tmp_path / "a"), "demos.jsonl",
                       expected)
    assert not (tmp_path / "a").exists()


def test_damaged_adapter_files_are_one_line(tmp_path, trained):
    adapter = tmp_path / "adapter"
    assert cli("adapt", "--run", trained[1], "--demos", _demos(tmp_path), "--out", adapter, "--quiet").exit_code == 0
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"input": "ab"}\n')
    weights = next(p for p in adapter.glob("*.safetensors") if p.name != "fusion.safetensors")
    for name in (weights.name, "fusion.safetensors", "adapter_config.json", "hypergen_adapter.json"):
        broken = tmp_path / f"broken-{name}"
        _copy_run(adapter, broken)
        (broken / name).write_bytes((broken / name).read_bytes()[:10])
        out = tmp_path / "p.jsonl"
        one_line_error(cli("predict", "--adapter", broken, "--input", queries, "--output", out, "--quiet"),
                       str(broken / name))
        assert not out.exists()
    (adapter / "base_model" / "model.safetensors").write_bytes(b"\x00" * 16)  # a damaged main-model folder
    one_line_error(cli("predict", "--adapter", adapter, "--input", queries, "--quiet"), "cannot load")


def test_checkpoints_that_fail_to_load_are_skipped_for_the_newest_valid_one(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"o": torch.ones(1)},
                        {"step": step}, keep=5)
    newest, middle = list_checkpoints(tmp_path)[-1], list_checkpoints(tmp_path)[-2]
    (newest / "manifest.json").write_text("[1, 2]")  # a manifest of the wrong shape
    (middle / "state.json").write_text('{"__tensor__": "t99"}')  # damaged, with a manifest that agrees
    manifest = json.loads((middle / "manifest.json").read_text())
    manifest["files"]["state.json"] = sha256(middle / "state.json")
    (middle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning) as caught:
        folder, weights, _, state = load_latest_checkpoint(tmp_path)
    assert folder.name == "step-00000001" and state == {"step": 1} and weights["w"].tolist() == [1.0, 1.0]
    messages = [str(w.message) for w in caught]
    assert any("step-00000003: unreadable manifest" in m for m in messages)
    assert any("step-00000002" in m and "state.json" in m for m in messages)


# -- 4. a full disk: one line, the previous checkpoint intact, --resume works once there is room ----------------------
@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(substring)``: from now on every fsync of a file whose path holds ``substring`` fails with
    ENOSPC, as a full disk reports it; ``full_disk(None)`` frees the disk."""
    real = os.fsync
    state = {"target": None}

    def fsync(fd):
        if state["target"] and state["target"] in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return lambda target: state.update(target=target)


@pytest.mark.parametrize("target, left", [
    (".step-00000004.tmp", ["step-00000002"]),   # the step-4 checkpoint
    ("metrics.jsonl", ["step-00000002", "step-00000004"]),  # the log line of step 5
    ("hypernetwork.safetensors", ["step-00000002", "step-00000004"]),  # the final weights
])
def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resume_finishes(tmp_path, trained, full_disk,
                                                                                 monkeypatch, target, left):
    file = _variant(tmp_path, trained, steps=6)
    run = tmp_path / "run"
    if target == "metrics.jsonl":  # the first log lines go through; the disk fills during step 5
        original = HypernetMethod.loss

        def filling(self, batch, step):
            if step == 4:
                full_disk(target)
            return original(self, batch, step)

        monkeypatch.setattr(HypernetMethod, "loss", filling)
    else:
        full_disk(target)
    result = cli(*train_args(file, run))
    monkeypatch.undo()
    one_line_error(result, target.split("/")[0] if target != ".step-00000004.tmp" else "step-00000004",
                   "cannot write (No space left on device)")
    assert [c.name for c in list_checkpoints(run)] == left
    assert not (run / "hypernetwork.safetensors").exists()
    resumed = cli(*train_args(file, run), "--resume")
    assert resumed.exit_code == 0 and f"resumed {run} at step {left[-1][-1]}" in resumed.output, resumed.output
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4,
                                                                                                       5, 6]
    assert not list(run.rglob(".*.tmp"))


def test_a_full_disk_while_writing_an_adapter_keeps_the_old_one(tmp_path, trained, full_disk):
    out = tmp_path / "adapter"
    assert cli("adapt", "--run", trained[1], "--demos", _demos(tmp_path), "--out", out, "--quiet").exit_code == 0
    (out / "README").write_text("my notes")  # not hypergen's: kept by --overwrite
    before = tree(out)
    full_disk("fusion.safetensors")
    one_line_error(cli("adapt", "--run", trained[1], "--demos", _demos(tmp_path, "other"), "--out", out,
                       "--overwrite", "--quiet"), "fusion.safetensors", "No space left on device")
    assert tree(out) == before and not list(tmp_path.glob(".adapter.*"))
    full_disk(None)
    assert cli("adapt", "--run", trained[1], "--demos", _demos(tmp_path, "other"), "--out", out, "--overwrite",
               "--quiet").exit_code == 0
    assert tree(out) != before and (out / "README").read_text() == "my notes"


# -- 5. one process per run folder ------------------------------------------------------------------------------------
def test_a_second_process_is_refused_and_the_lock_goes_with_a_crash(tmp_path, trained):
    data = json.loads(trained[0].read_text())
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hypergen.folders import FolderLock; "
                               "lock = FolderLock(sys.argv[1]); print('held', flush=True); time.sleep(600)", str(run)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HypergenError, match=rf"another hypergen process \(pid {holder.pid}\) is writing"):
            prepare_run_dir(run, data, resume=False, overwrite=False)
        one_line_error(cli(*train_args(trained[0], run)), "another hypergen process")
        assert sorted(p.name for p in run.iterdir()) == [".hypergen.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait()
    prepare_run_dir(run, data, resume=False, overwrite=False).release()
    with FolderLock(run):  # in one process too, a second claim is refused while the first holds it
        with pytest.raises(HypergenError, match="another hypergen process"):
            FolderLock(run)


# -- 6. a dead run stops; an overflowing learning rate is a clean stop -------------------------------------------------
def test_a_run_whose_updates_are_all_skipped_stops(tmp_path, trained, monkeypatch):
    original = HypernetMethod.loss

    def diverged(self, batch, step):
        loss, parts = original(self, batch, step)
        return loss * float("nan"), parts

    monkeypatch.setattr(HypernetMethod, "loss", diverged)
    result = cli(*train_args(_variant(tmp_path, trained, steps=8, max_consecutive_skips=3), tmp_path / "dead"))
    one_line_error(result, "step 3: 3 updates in a row were skipped (the last: non-finite loss (nan))",
                   "training.max_consecutive_skips is 3")
    assert [c.name for c in list_checkpoints(tmp_path / "dead")] == ["step-00000002"]  # kept, as the message says


@pytest.mark.parametrize("lr", ["1e38", "1e300"])
def test_an_overflowing_learning_rate_is_a_clean_stop(tmp_path, trained, lr):
    file = _variant(tmp_path, trained, steps=2)
    result = cli(*train_args(file, tmp_path / "run"), "--set", f"training.lr={lr}")
    one_line_error(result, "step 1: ", "training.lr", "stopped")
    assert not (tmp_path / "run" / "hypernetwork.safetensors").exists()


# -- 7. --resume on a finished run does nothing -----------------------------------------------------------------------
def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, trained):
    run = tmp_path / "run"
    _copy_run(trained[1], run)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    result = cli(*train_args(trained[0], run), "--resume")
    assert result.exit_code == 0 and "the run is finished" in result.output and "nothing to resume" in result.output
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == before


# -- 8. the umask, not 0600 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_files_and_folders_get_the_users_umask(tmp_path, trained, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
        atomic_save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(1)})
        prepare_run_dir(tmp_path / "run", json.loads(trained[0].read_text()), False, False).release()
        save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(1)}, {"o": torch.ones(1)}, {"step": 1}, keep=1)
        out = tmp_path / "adapter"
        assert cli("adapt", "--run", trained[1], "--demos", _demos(tmp_path), "--out", out, "--quiet").exit_code == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "x.json", tmp_path / "x.safetensors", *(tmp_path / "run").rglob("*"), *out.rglob("*"),
                 out):
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.is_file() and path.parent.name == "base_model":
            continue  # written by transformers' own save_pretrained (plain open: the umask applies)
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


# -- helpers -------------------------------------------------------------------------------------------------------
def _variant(tmp_path: Path, trained, **training) -> Path:
    """The fixture's recipe (and its embedded data: written once) with other training settings."""
    data = json.loads(trained[0].read_text())
    data["training"].update(training)
    return write(tmp_path, "variant", data)


def _demos(tmp_path: Path, name: str = "demos") -> Path:
    path = tmp_path / f"{name}.jsonl"
    symbol = "x" if name == "demos" else "q"
    path.write_text("".join(json.dumps({"input": w, "output": f"{symbol}{w}y"}) + "\n" for w in ("ab", "cd", "ef")))
    return path


def _copy_run(source: Path, dest: Path) -> None:
    import shutil

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".hypergen.lock"))
