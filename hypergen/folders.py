"""Output folders: the one check every command makes before writing a folder, what ``--overwrite`` may delete, and
the lock that keeps two processes out of one run.

A folder is hypergen's when it holds its kind's marker file (a run's ``hypergen-run.json``, an adapter's
``hypergen_adapter.json``), or, for runs written before the marker existed, the pairs of files only a run holds.
The rule for a command's output folder:

* missing, or an empty folder: written;
* hypergen's of the same kind: refused unless the command is told to continue it (``--resume``) or replace it
  (``--overwrite``); ``--overwrite`` deletes only the entries hypergen writes there (:attr:`FolderKind.entries`,
  and the hidden ``.*.tmp`` files of writes cut short); anything else in the folder stays, and a symbolic link is
  removed as a link, never followed;
* anything else (a file, a folder holding files hypergen did not write): refused with one line, with or without
  ``--overwrite``. Nothing outside the folder is ever deleted.

:class:`FolderLock` is an exclusive ``flock`` on ``FOLDER/.hypergen.lock``, held while a process writes a run; a
second process is refused at once. The operating system releases it when the process exits, crash included.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import HypergenError
from .io import share_like_open, writing

LOCK_FILE = ".hypergen.lock"


@dataclass(frozen=True)
class FolderKind:
    """What hypergen writes into one kind of output folder."""

    name: str                    # "run", "adapter": names it in messages
    marker: str                  # the file whose presence says hypergen wrote the folder
    entries: frozenset[str]      # every top-level name hypergen writes there (the marker included)
    legacy: tuple[tuple[str, str], ...] = field(default=())  # pairs of names that also identify an older folder

    def recognises(self, folder: Path) -> bool:
        if (folder / self.marker).is_file():
            return True
        return any((folder / a).exists() and (folder / b).exists() for a, b in self.legacy)

    def owns(self, name: str) -> bool:
        """Whether ``--overwrite`` may delete the top-level entry ``name``."""
        return name in self.entries or (name.startswith(".") and name.endswith(".tmp"))


def check_output_dir(folder: Path, kind: FolderKind, where: str) -> bool:
    """Refuse a folder hypergen must not write into; True when ``folder`` already holds hypergen's ``kind``
    (then the caller decides between resume, overwrite and refusal), False when it is missing or empty."""
    folder = Path(folder)
    if not folder.exists():
        if folder.is_symlink():
            raise HypergenError(f"{where}: {folder} is a broken symbolic link; choose another folder")
        return False
    if not folder.is_dir():
        raise HypergenError(f"{where}: {folder} is a file, not a folder; choose another folder")
    try:
        names = sorted(entry.name for entry in folder.iterdir() if entry.name != LOCK_FILE)
    except OSError as exc:
        raise HypergenError(f"{where}: cannot list {folder} ({exc.strerror or exc})") from None
    if not names:
        return False
    if kind.recognises(folder):
        return True
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise HypergenError(f"{where}: {folder} is not empty ({shown}) and is not a hypergen {kind.name} folder (no "
                        f"{kind.marker}); refusing to write or delete anything there; choose a new or empty folder")


def clear_output_dir(folder: Path, kind: FolderKind) -> list[str]:
    """Delete the entries of ``folder`` that hypergen writes for ``kind`` (``--overwrite``); return their names.
    Call it only on a folder :func:`check_output_dir` recognised."""
    removed = []
    with writing(folder):
        for entry in sorted(Path(folder).iterdir()):
            if entry.name != LOCK_FILE and kind.owns(entry.name):
                remove_entry(entry)
                removed.append(entry.name)
    return removed


def remove_entry(entry: Path) -> None:
    """Delete a file, a link (the link itself) or a folder tree (whose inner links are unlinked, not followed)."""
    if entry.is_symlink() or not entry.is_dir():
        entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(entry)


def prepare_output_dir(folder: Path, kind: FolderKind, overwrite: bool, where: str) -> Path:
    """The check for a folder a command writes whole (an adapter): refused if foreign, or if it already holds
    one and ``overwrite`` is off; with ``overwrite`` its old entries are cleared only when the new ones are ready
    (:func:`install_folder`). Returns ``folder``."""
    if check_output_dir(folder, kind, where) and not overwrite:
        raise HypergenError(f"{where}: {folder} already exists (a hypergen {kind.name}); pass --overwrite to "
                            "replace it or choose another folder")
    return Path(folder)


def install_folder(tmp: Path, folder: Path, kind: FolderKind) -> None:
    """Move the complete folder ``tmp`` (beside ``folder``) into place: renamed when ``folder`` does not exist;
    otherwise ``folder``'s own entries of ``kind`` are moved aside, ``tmp``'s entries moved in (renames only, so
    a full disk cannot stop it halfway), and the old entries deleted. Entries hypergen did not write stay."""
    folder = Path(folder)
    with writing(folder):
        if not folder.exists():
            tmp.rename(folder)
            return
        old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old.tmp")
        old.mkdir()
        for entry in list(folder.iterdir()):
            if entry.name != LOCK_FILE and kind.owns(entry.name):
                entry.rename(old / entry.name)
        for entry in list(tmp.iterdir()):
            entry.rename(folder / entry.name)
        tmp.rmdir()
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(folder: Path, kind: FolderKind) -> Iterator[Path]:
    """Yield a new temporary folder beside ``folder`` to fill (with the umask's mode); when the block ends it is
    installed with :func:`install_folder` (only ``kind``'s own entries of an existing ``folder`` are replaced). If
    the block raises, the temporary folder is removed and ``folder`` is left as it was. Check ``folder`` with
    :func:`prepare_output_dir` first."""
    final = Path(folder).resolve()
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        share_like_open(tmp, directory=True)  # mkdtemp makes it 0o700
    try:
        with writing(tmp):
            yield tmp
        install_folder(tmp, final, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderLock:
    """An exclusive lock on ``folder`` for this process (``flock`` on ``folder/.hypergen.lock``); usable as a
    context manager. A second process is refused at once with one line; the lock goes with the process."""

    def __init__(self, folder: Path, what: str = "run") -> None:
        self.path = Path(folder) / LOCK_FILE
        with writing(self.path):
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise HypergenError(f"{folder}: another hypergen process (pid {holder}) is writing this {what}; wait for "
                                "it to finish or choose another folder") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
