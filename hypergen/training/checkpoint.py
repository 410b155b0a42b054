"""Checkpoints: a folder per step, written under a temporary name and renamed into place, with a manifest of
SHA-256 checksums so that a truncated or corrupted checkpoint is refused and the previous one used instead.

    RUN/checkpoints/step-00000100/
        model.safetensors            trainable weights
        optimizer.{json,safetensors} optimizer and schedule state
        state.{json,safetensors}     step, sampler, regularizers, RNG states
        deepspeed/engine/...         only with distributed.backend "deepspeed": the engine's own files
        manifest.json                {file (relative path): sha256}, written last

A process killed during a save leaves only ``checkpoints/.step-*.tmp``: it is never loaded, and the next save or
resume removes it (:func:`remove_partial_checkpoints`). hypergen stores only tensors (safetensors) and JSON; no
pickle. The one exception is the DeepSpeed engine's folder, written by ``engine.save_checkpoint`` (torch.save
files: its optimizer partitions, one per process, and schedule); several processes write into the temporary
folder (:func:`begin_checkpoint` makes it, every process writes, then :func:`finish_checkpoint` on rank 0 adds
hypergen's files and the manifest, which covers the engine's files too, and renames it into place).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from ..errors import HypergenError
from ..io import atomic_save_tensors, atomic_write_json, load_tree, read_json, read_safetensors, save_tree, sha256
from ..io import writing
from .faults import maybe_kill


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], optimizer: Any, state: Any,
                    keep: int) -> Path:
    """Write step ``step``'s checkpoint in one process: :func:`begin_checkpoint`, then :func:`finish_checkpoint`."""
    begin_checkpoint(run_dir, step)
    return finish_checkpoint(run_dir, step, model_state, optimizer, state, keep)


def temporary_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where step ``step``'s checkpoint is written before it is complete."""
    return checkpoint_dir(run_dir) / f".step-{step:08d}.tmp"


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """Make the (empty) temporary folder of step ``step``'s checkpoint, after removing what killed saves left."""
    tmp = temporary_checkpoint_dir(run_dir, step)
    with writing(tmp):
        checkpoint_dir(run_dir).mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(run_dir)
        tmp.mkdir()
    return tmp


def finish_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], optimizer: Any, state: Any,
                      keep: int) -> Path:
    """Add hypergen's files and the manifest (of every file in the folder, sub-folders included) to the temporary
    folder :func:`begin_checkpoint` made, rename it into place and keep the newest ``keep`` checkpoints."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = temporary_checkpoint_dir(run_dir, step)
    atomic_save_tensors(tmp / "model.safetensors", model_state)
    save_tree(tmp, "optimizer", optimizer)
    maybe_kill("during_checkpoint", step)  # testing hook (HYPERGEN_FAULT); a no-op otherwise
    save_tree(tmp, "state", state)
    with writing(tmp):
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        manifest = {f.relative_to(tmp).as_posix(): sha256(f) for f in files}
    atomic_write_json(tmp / "manifest.json", {"step": step, "files": manifest})
    with writing(final):
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete the temporary folders a killed save left behind; return them."""
    root = checkpoint_dir(run_dir)
    leftovers = sorted(p for p in root.glob(".step-*.tmp")) if root.is_dir() else []
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return leftovers


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def verify(folder: Path) -> str | None:
    """None when ``folder`` is a complete checkpoint whose files match its manifest, else the reason."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = read_json(manifest_path, "checkpoint manifest")["files"]
        items = [(str(name), str(digest)) for name, digest in manifest.items()]
    except (HypergenError, KeyError, TypeError, AttributeError):
        return "unreadable manifest"
    for name, digest in items:
        path = folder / name
        if not path.resolve().is_relative_to(folder.resolve()):
            return f"{name} lies outside the checkpoint folder"
        if not path.is_file():
            return f"{name} missing"
        try:
            if sha256(path) != digest:
                return f"{name} does not match its checksum (truncated or corrupted)"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
    return None


def load_latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, torch.Tensor], Any, Any] | None:
    """The newest checkpoint that verifies and loads, as (folder, model state, optimizer tree, state tree); None
    if there is none."""
    for folder in reversed(list_checkpoints(run_dir)):
        problem = verify(folder)
        if problem is None:
            try:
                return folder, read_safetensors(folder / "model.safetensors", "checkpoint weights"), \
                    load_tree(folder, "optimizer"), _state_tree(folder)
            except HypergenError as exc:
                problem = str(exc)
        warnings.warn(f"skipping checkpoint {folder}: {problem}; falling back to the previous one", stacklevel=2)
    if list_checkpoints(run_dir):
        raise HypergenError(f"{checkpoint_dir(run_dir)}: no checkpoint passed its checksum; cannot resume")
    return None


def _state_tree(folder: Path) -> Any:
    state = load_tree(folder, "state")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise HypergenError(f"{folder / 'state.json'}: holds no step number")
    return state
