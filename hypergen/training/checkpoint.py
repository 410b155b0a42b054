"""Checkpoints: a folder per step, written under a temporary name and renamed into place, with a manifest of
SHA-256 checksums so that a truncated or corrupted checkpoint is refused and the previous one used instead.

    RUN/checkpoints/step-00000100/
        model.safetensors            trainable weights
        optimizer.{json,safetensors} optimizer and schedule state
        state.{json,safetensors}     step, sampler, regularizers, RNG states
        manifest.json                {file: sha256}, written last

A process killed during a save leaves only ``checkpoints/.step-*.tmp``: it is never loaded, and the next save or
resume removes it (:func:`remove_partial_checkpoints`). Only tensors (safetensors) and JSON are stored; no pickle.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import HypergenError
from ..io import atomic_save_tensors, atomic_write_json, load_tree, save_tree, sha256
from .faults import maybe_kill


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], optimizer: Any, state: Any,
                    keep: int) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    tmp.mkdir()
    atomic_save_tensors(tmp / "model.safetensors", model_state)
    save_tree(tmp, "optimizer", optimizer)
    maybe_kill("during_checkpoint", step)  # testing hook (HYPERGEN_FAULT); a no-op otherwise
    save_tree(tmp, "state", state)
    manifest = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
    atomic_write_json(tmp / "manifest.json", {"step": step, "files": manifest})
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
        manifest = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return "unreadable manifest"
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if sha256(path) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def load_latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, torch.Tensor], Any, Any] | None:
    """The newest checkpoint that verifies, as (folder, model state, optimizer tree, state tree); None if none."""
    for folder in reversed(list_checkpoints(run_dir)):
        problem = verify(folder)
        if problem:
            warnings.warn(f"skipping checkpoint {folder}: {problem}; falling back to the previous one", stacklevel=2)
            continue
        return folder, load_file(str(folder / "model.safetensors")), load_tree(folder, "optimizer"), \
            load_tree(folder, "state")
    if list_checkpoints(run_dir):
        raise HypergenError(f"{checkpoint_dir(run_dir)}: no checkpoint passed its checksum; cannot resume")
    return None
