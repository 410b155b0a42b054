"""GGUF files as main models: a cheap check of the file, then a one-time conversion into a cached Hugging Face folder.

transformers reads a GGUF (``from_pretrained(folder, gguf_file=NAME)``) by dequantizing every tensor, which takes
tens of seconds; a model loaded that way also refuses ``save_pretrained``. So the first load converts the file into
a plain safetensors folder (float32 weights, config, tokenizer and chat template) in the cache, and every later load
reads that folder (about a second)::

    CACHE/                              $HYPERGEN_CACHE if set, else ~/.cache/hypergen/models
        STEM-KEY/                       one converted GGUF; KEY hashes the file's name, size, mtime and first MiB
            config.json, model.safetensors, tokenizer.json, tokenizer_config.json, chat_template.jinja, ...
            hypergen_conversion.json    what it was converted from (written last)
        .STEM-KEY.lock                  held while converting (a second process waits, then reads the result)
        .STEM-KEY.*.tmp/                a conversion under way; one left by a killed process is removed next time

A conversion fills a temporary sibling folder and renames it into place, so a folder named ``STEM-KEY`` is always
complete. Only names of these shapes are ever written or removed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from ..errors import HypergenError
from ..io import share_like_open

FORMAT = 1  # bump when the converted folder's layout changes: every cached folder is then converted again
MARKER = "hypergen_conversion.json"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def cache_root() -> Path:
    """Where converted models are kept: ``$HYPERGEN_CACHE``, else ``~/.cache/hypergen/models``."""
    configured = os.environ.get("HYPERGEN_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "hypergen" / "models"


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says: format version, ``general.architecture``, ``general.name`` (or None),
    tensor count, and the byte where its last tensor ends (which the file's size must reach)."""

    path: Path
    version: int
    architecture: str
    name: str | None
    tensor_count: int
    data_end: int


def read_gguf_header(path: Path, where: str = "main_model.name_or_path") -> GGUFHeader:
    """Parse ``path``'s GGUF header and tensor table (no tensor data; ~0.1 s for a 100 MB file). A file that is
    not GGUF, is truncated or cannot be read is one line naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if size < 4 or handle.read(4) != b"GGUF":
                raise HypergenError(f"{where}: {path} is not a GGUF file (it does not start with the bytes 'GGUF')")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
                return _parse(blob, path, size, where)
    except (struct.error, IndexError, KeyError, ValueError, OverflowError, MemoryError):
        raise HypergenError(f"{where}: {path} is a truncated or damaged GGUF file ({size} bytes; its header "
                            "ends early)") from None
    except OSError as exc:
        raise HypergenError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None


def _parse(blob, path: Path, size: int, where: str) -> GGUFHeader:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    def string(pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", blob, pos)
        if pos + 8 + length > size:
            raise struct.error("string past the end")
        return bytes(blob[pos + 8: pos + 8 + length]).decode("utf-8"), pos + 8 + length

    def value(kind: int, pos: int):
        if kind in _SCALARS:
            return struct.unpack_from(_SCALARS[kind], blob, pos)[0], pos + struct.calcsize(_SCALARS[kind])
        if kind == 8:
            return string(pos)
        if kind != 9:
            raise struct.error(f"unknown metadata type {kind}")
        element, count = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        if element in _SCALARS:  # skipped: no array of numbers matters here
            return None, pos + count * struct.calcsize(_SCALARS[element])
        for _ in range(count):  # strings (a vocabulary) or nested arrays: walked, not kept
            _, pos = value(element, pos)
        return None, pos

    version, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise HypergenError(f"{where}: {path} is GGUF version {version}; only versions 2 and 3 can be read")
    pos, metadata = 24, {}
    for _ in range(kv_count):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        metadata[key], pos = value(kind, pos + 4)
    end = 0
    for _ in range(tensor_count):
        _, pos = string(pos)
        (dims,) = struct.unpack_from("<I", blob, pos)
        shape = struct.unpack_from(f"<{dims}Q", blob, pos + 4)
        ggml_type, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * dims)
        pos += 4 + 8 * dims + 12
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        elements = 1
        for dim in shape:
            elements *= dim
        end = max(end, offset + elements // block * block_bytes)
    alignment = metadata.get("general.alignment") or 32
    data_end = (pos + alignment - 1) // alignment * alignment + end
    if data_end > size:
        raise HypergenError(f"{where}: {path} is a truncated GGUF file ({size} bytes, but its tensors end at byte "
                            f"{data_end})")
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise HypergenError(f"{where}: {path} is a GGUF file without general.architecture in its header")
    return GGUFHeader(path, version, architecture, metadata.get("general.name"), tensor_count, data_end)


@lru_cache(maxsize=1)
def transformers_architectures() -> frozenset[str]:
    """The GGUF architectures (``general.architecture``) this transformers can read."""
    known: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        known.update(GGUF_SUPPORTED_ARCHITECTURES)
    except ImportError:
        pass
    try:
        from transformers.integrations.gguf import GGUF_ARCHS

        known.update(GGUF_ARCHS)
    except ImportError:
        pass
    return frozenset(known)


def check_gguf(path: Path, where: str = "main_model.name_or_path") -> GGUFHeader:
    """The header of ``path``, checked: a readable, complete GGUF of an architecture transformers reads."""
    header = read_gguf_header(path, where)
    known = transformers_architectures()
    if known and header.architecture not in known and not header.architecture.startswith("t5"):
        raise HypergenError(f"{where}: {path} is a GGUF of architecture {header.architecture!r}, which transformers "
                            f"cannot load (it loads: {', '.join(sorted(known))})")
    return header


def file_key(path: Path) -> str:
    """A key that changes when the file does: its name, size, mtime and first MiB (and :data:`FORMAT`)."""
    stat = path.stat()
    digest = hashlib.sha256(f"{FORMAT}\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
    return f"{_stem(path)}-{digest.hexdigest()[:16]}"


def _stem(path: Path) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(path).stem)[:80] or "model"


def cached_folder(key: str) -> Path | None:
    """The converted folder of ``key`` if the cache holds a complete one, else None."""
    folder = cache_root() / key
    return folder if (folder / MARKER).is_file() else None


def cached_conversion(key: str, make_gguf: Callable[[Path], Path], where: str,
                      check: Callable[[object], None] | None = None) -> Path:
    """The cached folder ``CACHE/key``, converting once if absent. ``make_gguf(scratch)`` returns the GGUF to
    convert (a file on disk, or one it writes into the empty folder ``scratch``, removed afterwards); ``check``
    is called on the model loaded from the GGUF before anything is cached (it raises HypergenError to refuse)."""
    done = cached_folder(key)
    if done is not None:
        return done
    root = cache_root()
    with _writing(root):
        root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock") as locked:
        done = cached_folder(key)
        if done is not None:  # another process converted it while this one waited
            return done
        if locked:  # nobody else converts this key now: what is left of a killed conversion goes
            for stale in root.glob(f".{key}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        final = root / key
        if final.is_dir():  # a folder of ours without its marker (a marker is written last): incomplete
            shutil.rmtree(final, ignore_errors=True)
        with _writing(root):
            scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.", suffix=".scratch.tmp"))
            staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.", suffix=".tmp"))
            share_like_open(staging, directory=True)  # mkdtemp makes it 0o700
        try:
            convert(make_gguf(scratch), staging, where, check)
            try:
                os.rename(staging, final)
            except OSError as exc:  # another converter (without a working lock) won the race: use its folder
                if cached_folder(key) is None:
                    raise HypergenError(f"{final}: cannot install the converted model ({exc.strerror or exc})") \
                        from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
    return final


def convert(gguf: Path, folder: Path, where: str, check: Callable[[object], None] | None = None) -> None:
    """Load ``gguf`` with transformers (dequantized to float32) and save it as a Hugging Face folder in ``folder``
    (an existing empty folder): weights, config, tokenizer (with its chat template) and :data:`MARKER` last."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    started = time.perf_counter()
    header = check_gguf(gguf, where)
    source, name = str(gguf.parent), gguf.name
    try:
        auto = AutoModelForSeq2SeqLM if header.architecture.startswith("t5") else AutoModelForCausalLM
        model = auto.from_pretrained(source, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises for a file it cannot read
        if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HypergenError(f"{where}: cannot load the GGUF {gguf} ({type(exc).__name__}: {reason})") from None
    if check is not None:
        try:
            check(model)
        except HypergenError as exc:
            raise HypergenError(f"{where}: {gguf}: {exc}") from None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse a model loaded from a GGUF
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    del model
    with _writing(folder):
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        stat = gguf.stat()
        marker = {"hypergen_conversion": FORMAT, "source": str(gguf), "size": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns, "architecture": header.architecture, "name": header.name,
                  "model_class": type(plain).__name__, "seconds": round(time.perf_counter() - started, 1)}
        (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OS error (disk full, read-only, no permission) while writing ``path`` as one line naming it."""
    try:
        yield
    except OSError as exc:
        raise HypergenError(f"{path}: cannot write the converted model ({exc.strerror or exc}); set HYPERGEN_CACHE "
                            "to a writable folder") from None


@contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created if absent): a second converter of the same key waits here.
    Yields whether the lock is held (without ``flock``, e.g. on Windows, converters race and the rename decides)."""
    with _writing(path):
        handle = open(path, "a")
    with handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            locked = True
        except (ImportError, OSError):
            locked = False
        yield locked
