"""Reading and writing hypergen's files: atomic writes that respect the umask, reads whose every failure is one
line naming the file, and pickle-free state trees (safetensors for tensors, JSON for the rest).

Every write goes to a temporary file beside its target, is flushed to disk (``fsync``) and renamed into place, so a
reader sees the old file or the new one, never half of one; a failed write (a full disk, a read-only folder) raises
a :class:`~hypergen.errors.HypergenError` naming the file and leaves the old file as it was. Files get the mode a
plain ``open`` would give them (0o666 less the umask), not ``mkstemp``'s 0o600, so a group sharing a run folder can
read it. Every read (JSON, safetensors) turns any OS, decoding or format error into one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import HypergenError


def current_umask() -> int:
    """The process's umask, read without changing it (Linux's /proc), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_open(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would have given it: 0o666 (files) or 0o777 (folders) less the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (ENOSPC, EROFS, EACCES, ...) into one line naming it."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HypergenError(f"{path}: cannot write ({reason}); nothing was replaced") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path`` and rename it into place."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it into place."""
    _atomic_write(Path(path), lambda tmp: _write_and_sync(tmp, data))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json_object(path: Path, what: str = "JSON file") -> dict[str, Any]:
    """A JSON file holding an object (read by :func:`read_json`); another type is a one-line HypergenError."""
    data = read_json(Path(path), what)
    if not isinstance(data, dict):
        raise HypergenError(f"{path}: expected a JSON object")
    return data


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as a safetensors file at ``path``, written like :func:`atomic_write_bytes`."""
    def write(tmp: Path) -> None:
        save_file(_unshared(tensors), tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())

    _atomic_write(Path(path), write)


def _write_and_sync(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _atomic_write(path: Path, write) -> None:
    """The one atomic writer: ``write(tmp)`` fills a temporary file beside ``path``, which is renamed over it."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            share_like_open(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
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


# -- reading -----------------------------------------------------------------------------------------------------

def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; ``what`` ("recipe", "task file", ...) names it in the one-line error."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise HypergenError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise HypergenError(f"{path}: is a folder; expected a {what}") from None
    except OSError as exc:
        raise HypergenError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_text(path: Path, what: str) -> str:
    """The text of ``path``: UTF-8, or UTF-8/16/32 with a byte-order mark; anything else is refused in one line."""
    data = read_bytes(path, what)
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise HypergenError(f"{path}: {what} is not {encoding.upper().removesuffix('-SIG')} text ({exc.reason} at "
                            f"byte {exc.start})") from None


def parse_json(data: bytes | str, where: str) -> Any:
    """JSON from bytes in UTF-8 (a byte-order mark allowed), UTF-16 or UTF-32, or from text; every failure is one
    line starting with ``where`` (the file, and the line number for JSONL)."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise HypergenError(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise HypergenError(f"{where}: not UTF-8, UTF-16 or UTF-32 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise HypergenError(f"{where}: nested too deeply to read (objects or lists inside each other "
                            "hundreds of levels deep)") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise HypergenError(f"{where}: not valid JSON ({exc})") from None


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path`` (see :func:`parse_json`); an empty file is refused as such."""
    data = read_bytes(path, what)
    if not data.strip():
        raise HypergenError(f"{path}: {what} is empty; expected JSON")
    return parse_json(data, str(path))


def read_safetensors(path: Path, what: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, empty, truncated or damaged file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise HypergenError(f"{path}: {what} not found")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        size = path.stat().st_size
        raise HypergenError(f"{path}: damaged or truncated {what} ({size} bytes; {reason})") from None


def check_tensors_fit(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Refuse ``found`` (read from ``path``) unless it has exactly ``expected``'s names, shapes and dtypes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise HypergenError(f"{path}: does not fit (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); "
                            "written for another recipe or main model?")
    for name, want in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise HypergenError(f"{path}: {name} is {got.dtype} {tuple(got.shape)}, expected {want.dtype} "
                                f"{tuple(want.shape)}; written for another recipe or main model?")


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
    skeleton = read_json(Path(folder) / f"{name}.json", "state file")
    tensors = read_safetensors(Path(folder) / f"{name}.safetensors", "state file")
    try:
        return unflatten_tree(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise HypergenError(f"{Path(folder) / name}.json: damaged state skeleton ({type(exc).__name__}: {exc})") \
            from None
