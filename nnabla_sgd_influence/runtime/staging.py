"""The files a run writes for the user, staged beside their destinations and committed together;
and the one way the run writes an array to its temporary folder (:func:`save_array`).

A run may write several files (the ranking CSV, the step log, the cleansed CSV, the tile
image). Written one after the other, a failure or a Ctrl-C between two of them leaves some
written and some not. Here every file is first written to a temporary sibling; only when all
are complete (flushed and synced) are they renamed over their destinations, at once:

    with staged_outputs() as outputs:
        with outputs.text(step_log) as stream:
            ...
        with outputs.text(output) as stream:
            ...
    # both renamed here; on an error or an interrupt, neither, and no temporary file is left

The commit checks for a pending signal first (:func:`.signals.checkpoint`), then holds signals
off while it renames. Should a rename fail, the destinations renamed before it are put back as
they were (a replaced file is kept as a hard link until the commit ends).

A replaced file keeps its permission bits (a private 0600 file stays private) and, when the
run may set them, its owner and group. Temporary names are short (``.<first 32 characters of
the name>.<random>.tmp``), so a destination whose own name fits the file system always gets a
temporary sibling that fits too. Write errors (a full disk, a file-size limit) come out as one
:class:`~..errors.InfluenceError` naming the destination.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, TextIO

import numpy as np

from ..errors import InfluenceError, excerpt_path
from . import signals
from .oserrors import os_error_line

TEMPORARY_NAME_CHARS = 32  # characters of the destination's name kept in the temporary name


@dataclass
class _Staged:
    temporary: str
    destination: Path
    mode: int
    owner: Optional[tuple] = None  # (uid, gid) of the file replaced


def temporary_sibling(destination: Path) -> str:
    """Create an empty temporary file beside ``destination``; its path."""
    destination = Path(destination)
    prefix = f".{destination.name[:TEMPORARY_NAME_CHARS]}."
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=destination.parent)
    os.close(handle)
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replaced_file_attributes(destination: Path):
    """(mode, owner) the new file should get: the existing regular file's, or the defaults."""
    try:
        info = os.lstat(destination)
    except OSError:
        return 0o666 & ~_umask(), None
    if not stat.S_ISREG(info.st_mode):
        return 0o666 & ~_umask(), None
    return stat.S_IMODE(info.st_mode) & 0o777, (info.st_uid, info.st_gid)


class StagedOutputs:
    """Temporary siblings of the run's output files, renamed into place by :meth:`commit`."""

    def __init__(self) -> None:
        self._staged: List[_Staged] = []
        self.committed = False

    @property
    def destinations(self) -> List[Path]:
        return [entry.destination for entry in self._staged]

    @contextmanager
    def binary(self, destination: Path) -> Iterator[BinaryIO]:
        """A binary stream for ``destination``'s content, complete when the block ends."""
        with self._open(destination, "wb") as stream:
            yield stream

    @contextmanager
    def text(
        self, destination: Path, encoding: str = "utf-8", newline: str = ""
    ) -> Iterator[TextIO]:
        """A text stream for ``destination``; ``newline=""`` writes line ends as given."""
        with self._open(destination, "w", encoding=encoding, newline=newline) as stream:
            yield stream

    @contextmanager
    def _open(self, destination: Path, mode: str, **options) -> Iterator[io.IOBase]:
        destination = Path(destination)
        if self.committed:
            raise RuntimeError("outputs were already committed")
        if any(entry.destination == destination for entry in self._staged):
            raise ValueError(f"{destination} is staged twice")
        try:
            temporary = temporary_sibling(destination)
        except OSError as error:
            raise InfluenceError(
                os_error_line(
                    error, destination.parent, f"write {excerpt_path(destination.name)} in"
                )
            ) from None
        entry = _Staged(temporary, destination, *_replaced_file_attributes(destination))
        self._staged.append(entry)  # from here on, discard() removes it
        try:
            with open(temporary, mode, **options) as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            error.filename = None  # name the destination, not the temporary file
            raise InfluenceError(os_error_line(error, destination, "write")) from None

    def commit(self) -> None:
        """Rename every staged file over its destination; all of them or none.

        Raises :class:`.signals.Interrupted` instead when a signal is pending: nothing is
        replaced then.
        """
        signals.checkpoint()
        with signals.deferred():
            done: List[tuple] = []  # (entry, backup of the replaced file or None)
            try:
                for entry in self._staged:
                    self._prepare(entry)
                    backup = self._backup(entry.destination)
                    os.replace(entry.temporary, entry.destination)
                    done.append((entry, backup))
            except OSError as error:
                self._roll_back(done)
                raise InfluenceError(os_error_line(error, entry.destination, "replace")) from None
            for _, backup in done:
                if backup is not None:
                    with suppress(OSError):
                        os.unlink(backup)
            self.committed = True
            for folder in {entry.destination.parent for entry in self._staged}:
                _sync_folder(folder)

    @staticmethod
    def _prepare(entry: _Staged) -> None:
        os.chmod(entry.temporary, entry.mode)
        if entry.owner is not None and hasattr(os, "chown"):
            with suppress(OSError):  # only root may give a file to someone else
                os.chown(entry.temporary, *entry.owner)

    @staticmethod
    def _backup(destination: Path) -> Optional[str]:
        """A hard link to the file about to be replaced, to put it back on a failed commit."""
        if not os.path.lexists(destination):
            return None
        name = temporary_sibling(destination)
        os.unlink(name)
        try:
            os.link(destination, name, follow_symlinks=False)
        except (OSError, NotImplementedError):
            return None
        return name

    @staticmethod
    def _roll_back(done: List[tuple]) -> None:
        for entry, backup in reversed(done):
            with suppress(OSError):
                if backup is not None:
                    os.replace(backup, entry.destination)
                else:
                    os.unlink(entry.destination)

    def discard(self) -> None:
        """Remove every temporary file not committed (safe to call more than once)."""
        with signals.deferred():
            for entry in self._staged:
                with suppress(OSError):
                    os.unlink(entry.temporary)
            if not self.committed:
                self._staged.clear()


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    flags = getattr(os, "O_DIRECTORY", 0) | os.O_RDONLY
    try:
        handle = os.open(folder, flags)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Stage the run's outputs in the block; commit at its end, or discard on any exception."""
    outputs = StagedOutputs()
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


def save_array(path: Path, array: np.ndarray) -> int:
    """``np.save`` with errors that carry their errno, as one line naming ``path``; bytes written.

    ``np.save`` on a real file writes with C's ``fwrite`` and reports a full disk as
    ``OSError: 83118 requested and 4064 written``, without errno; writing through Python's
    own file object reports ENOSPC or EFBIG. A partial file is removed.
    """
    path = Path(path)
    try:
        with open(path, "wb") as stream:
            np.lib.format.write_array(_PlainWriter(stream), np.asarray(array), allow_pickle=False)
        return path.stat().st_size
    except OSError as error:
        with suppress(OSError):
            os.unlink(path)
        raise InfluenceError(
            os_error_line(
                error, path, "write", "choose another place for temporary files with --temp-dir"
            )
        ) from None


class _PlainWriter:
    """A file object numpy does not recognize as one, so that it writes with ``write``."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, data) -> int:
        return self._stream.write(data)
