"""The ``pretrain`` section of a pretrain recipe (``"kind": "pretrain"``, HyperTuning-PT's first stage): how each
text is cut into four chunks, and where the text comes from (:mod:`hypergen.pretraining.corpus`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .checks import Strict


class Corpus(Strict):
    """A ``datasets``-loadable corpus: ``datasets.load_dataset(path, name, split=split, data_files=data_files)``,
    one text per row in ``text_field``.

    ``path``: a hub id (``allenai/c4``; from the local cache when the hub is unreachable, else one line saying so),
    a local file, folder or glob of ``.jsonl``/``.json``, ``.parquet`` or ``.txt`` files, or a ``datasets`` builder
    name ("json", "parquet", "text", "csv") with ``data_files``."""

    path: str = Field(min_length=1)
    name: str | None = Field(None, description="the dataset's configuration (e.g. c4's 'en')")
    split: str = "train"
    data_files: str | list[str] | None = Field(None, description="files (globs) within the dataset or on disk")
    text_field: str = Field("text", min_length=1, description="the column holding each row's text")
    sample_by: Literal["line", "paragraph", "document"] | None = Field(
        None, description=".txt files: a text per line (datasets' default), per paragraph, or per file")


ChunkLength = Annotated[int, Field(ge=1)]


class Pretrain(Strict):
    """Each text drawn gives ``sum(chunk_lengths)`` consecutive tokens, cut into chunks c1, c2, c3, c4: the
    hypernetwork reads c1 then c4 (its "demos"), the frozen main model reads c2 with the generated parameters (and
    fusion, if the recipe has it) and is trained to predict c3 (the loss is on c3 only). A text shorter than that is
    skipped, and counted (RUN/pretrain_data.json)."""

    chunk_lengths: list[ChunkLength] = Field(min_length=4, max_length=4,
                                             description="tokens in c1, c2, c3, c4 (HyperTuning: 512, 128, 128, 512)")
    corpus: Corpus | None = Field(
        None, description="the text; not set: the recipe's training tasks (data), each task's definition and "
        "instances as one document, never a test or validation task")
