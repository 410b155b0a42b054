"""Atomic file writes and pickle-free state trees (safetensors for tensors, JSON for the rest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .errors import HypergenError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path`` and rename it into place."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``final`` to fill; when the block ends it takes ``final``'s place (an
    existing ``final`` is moved aside, then removed). If the block raises, the temporary folder is removed and
    ``final`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
            final.rename(old / "replaced")
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object; a missing file, bad JSON or another type is a one-line HypergenError."""
    path = Path(path)
    if not path.is_file():
        raise HypergenError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HypergenError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HypergenError(f"{path}: expected a JSON object")
    return data


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_unshared(tensors), tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors accepts: tensors that share memory (tied embeddings) are cloned apart."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        value = value.detach().contiguous().cpu()
        pointer = value.untyped_storage().data_ptr() if value.numel() else -1
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def flatten_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into a JSON skeleton and a flat dict of tensors (dict keys keep their types)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[k, walk(v)] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return {"__list__": [walk(v) for v in node], "tuple": isinstance(node, tuple)}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} without pickle")

    return walk(tree), tensors


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_tree(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            items = [unflatten_tree(v, tensors) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton


def save_tree(folder: Path, name: str, tree: Any) -> None:
    """``folder/name.json`` (skeleton) + ``folder/name.safetensors`` (tensors)."""
    skeleton, tensors = flatten_tree(tree)
    atomic_save_tensors(Path(folder) / f"{name}.safetensors", tensors)
    atomic_write_json(Path(folder) / f"{name}.json", skeleton)


def load_tree(folder: Path, name: str) -> Any:
    skeleton = json.loads((Path(folder) / f"{name}.json").read_text())
    tensors = load_file(str(Path(folder) / f"{name}.safetensors"))
    return unflatten_tree(skeleton, tensors)
