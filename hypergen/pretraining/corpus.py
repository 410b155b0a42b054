"""Text sources for hypernetwork pre-training: a sequence of documents (``len(source)``, ``source[i] -> str``).

* :class:`TaskText`: training tasks read as plain text, one document per task (its definition, then one line per
  instance: input, a space, its first output). The CPU default: text the project already has.
* :func:`load_corpus`: any ``datasets``-loadable corpus (a hub id such as ``allenai/c4``, or local ``.jsonl``,
  ``.parquet``, ``.txt`` files), read lazily row by row (``datasets`` memory-maps its Arrow files).

Every failure is one line naming ``pretrain.corpus`` and what is wrong.
"""

from __future__ import annotations

import glob
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence
from unittest import mock

from ..errors import HypergenError
from ..pretrained.hub import hub_reachable
from ..recipe.pretrain import Corpus
from ..data.tasks import Task

WHERE = "pretrain.corpus"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
BUILDERS = {"json", "parquet", "text", "csv"}
COMPRESSED = {".gz", ".bz2", ".xz", ".zst"}  # c4-train.00000-of-01024.json.gz: json, read through datasets


def file_builder(path: str | Path) -> str | None:
    """The ``datasets`` builder of a local file by its suffix (a compression suffix aside), or None."""
    suffixes = Path(path).suffixes
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return FILE_BUILDERS.get(suffixes[-1]) if suffixes else None


def task_document(task: Task) -> str:
    """``task`` as plain text: its definition, then ``input output`` per instance, one per line."""
    lines = [task.definition.strip()] + [f"{e.input.strip()} {e.outputs[0].strip()}" for e in task.instances]
    return "\n".join(lines) + "\n"


class TaskText:
    """Tasks (the training tasks: the caller never passes test tasks) as documents, in the given order."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.task_names = [t.name for t in tasks]
        self.documents = [task_document(t) for t in tasks]
        self.description = f"the instances of {len(tasks)} training tasks"

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> str:
        return self.documents[index]


class DatasetText:
    """The ``text_field`` of each row of a ``datasets.Dataset``; a missing or non-text value reads as ""."""

    def __init__(self, dataset, text_field: str, description: str) -> None:
        self.dataset = dataset
        self.text_field = text_field
        self.description = description

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> str:
        value = self.dataset[index][self.text_field]
        return value if isinstance(value, str) else ""


def load_corpus(spec: Corpus) -> DatasetText:
    """The corpus ``spec`` names, loaded through ``datasets.load_dataset``; see :class:`~hypergen.recipe.pretrain.
    Corpus` for what ``path`` may be. A hub id is read from the local cache when the hub is unreachable."""
    builder, data_files = _builder_and_files(spec)
    hub_id = builder == spec.path and builder not in BUILDERS
    offline = hub_id and not hub_reachable()
    dataset = _load(spec, builder, data_files, offline)
    if spec.text_field not in dataset.column_names:
        raise HypergenError(f"{WHERE}.text_field: {spec.text_field!r} is not a column of {spec.path!r} (its "
                            f"columns: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise HypergenError(f"{WHERE}: {spec.path!r} split {spec.split!r} holds no rows")
    return DatasetText(dataset, spec.text_field, f"{spec.path} ({spec.split})")


def _builder_and_files(spec: Corpus) -> tuple[str, str | list[str] | None]:
    """(what ``load_dataset`` is given as its path, its data_files): a file builder for local files, else as is."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*") if file_builder(f) and f.is_file())
    elif path.is_file():
        files = [str(path)]
    elif any(c in spec.path for c in "*?["):
        files = sorted(glob.glob(str(path), recursive=True))
        if not files:
            raise HypergenError(f"{WHERE}.path: no file matches {spec.path!r}")
    elif spec.path.startswith((".", "/", "~")):
        raise HypergenError(f"{WHERE}.path: {path} does not exist")
    else:
        return spec.path, spec.data_files  # a builder name or a hub id
    if spec.data_files is not None:
        raise HypergenError(f"{WHERE}.data_files: not used with local files in path; name them in path (a folder, "
                            "a file or a glob), or set path to a builder ('json', 'parquet', 'text')")
    kinds = {file_builder(f) for f in files}
    if not files or None in kinds or len(kinds) > 1:
        found = ", ".join(sorted({"".join(Path(f).suffixes) or "(no suffix)" for f in files})) or "none"
        raise HypergenError(f"{WHERE}.path: {spec.path!r}: expected .jsonl/.json, .parquet or .txt files (or "
                            f"compressed: .gz, ...) of one kind, found {found}")
    return kinds.pop(), files


def _load(spec: Corpus, builder: str, data_files, offline: bool):
    import datasets

    extra = {"sample_by": spec.sample_by} if spec.sample_by and builder == "text" else {}
    try:
        with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True) if offline else nullcontext():
            return datasets.load_dataset(builder, spec.name, split=spec.split, data_files=data_files, **extra)
    except Exception as exc:  # noqa: BLE001 - whatever datasets raises for a corpus it cannot read: one line
        if offline:
            raise HypergenError(
                f"{WHERE}.path: cannot fetch {spec.path!r} from the Hugging Face Hub (no network access from here) "
                "and it is not in the local datasets cache; download it elsewhere and point the recipe at the "
                f"files, e.g. --set {WHERE}.path=/path/to/{spec.path.split('/')[-1]}/ (.jsonl, .parquet or .txt)"
            ) from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HypergenError(f"{WHERE}: cannot load {spec.path!r} ({type(exc).__name__}: {reason})") from None

