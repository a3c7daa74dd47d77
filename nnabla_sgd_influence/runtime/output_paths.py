"""What a run may write to: checked before any work, against everything the run reads.

Rules for every file a run writes for the user (the ranking CSV, the step log, and any later
output), each checked by :func:`check_outputs` before training:

1. **Never an input.** It must not be, resolve to, or hard-link to any file the run reads: the
   model, both CSVs, every image they name, and the ``net.nntxt`` read for the context.
   Files are compared by identity (device and inode), so every spelling of a path, every
   symbolic link to it and every hard link of it is caught. Outputs must differ from each
   other too.
2. **Only a regular file is replaced.** An existing folder, FIFO, device or socket at the
   output's path is refused, never replaced.
3. **A symbolic link is refused.** Replacing the link would silently detach it from its target,
   and writing through it would let a planted link send the output anywhere; the message names
   the target, so that the user can pass it instead.
4. **A read-only file is refused.** Its write permission was removed on purpose; replacing it
   (which the folder's permissions would allow) would ignore that. Read-only means: no write
   permission bit at all, or none for this user.
5. **Names and paths fit the file system**, with their temporary siblings (see
   :mod:`.staging`), and the output's folder exists and is writable.

:func:`files_read` and :func:`image_inputs` name the files a run reads and
:func:`input_identities` collects their identities; :func:`rebase_image_cells` makes image
paths of a tabular output resolve from the output's folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..errors import InfluenceError, excerpt_path
from .oserrors import too_long
from .staging import TEMPORARY_NAME_CHARS

Identity = Tuple[int, int]  # (st_dev, st_ino)
# The longest name staging.temporary_sibling creates: "." + 32 + "." + 8 random + ".tmp".
TEMPORARY_NAME_BYTES = 1 + TEMPORARY_NAME_CHARS * 4 + 1 + 8 + 4  # 4 bytes per UTF-8 character
# Under --temp-dir the run creates sgd_influence_XXXXXXXX/trial_N/snapshots-SEED/NNNNNNN.npy.
WORKSPACE_DEPTH_BYTES = 96

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def relative_path(target: Path, folder: Path) -> str:
    """``target`` relative to ``folder``, with forward slashes (absolute if impossible)."""
    target = Path(os.path.abspath(target))
    try:
        text = os.path.relpath(target, os.path.abspath(folder))
    except ValueError:  # another drive on Windows
        text = str(target)
    return text.replace(os.sep, "/")


def _show(path) -> str:
    return excerpt_path(path)


def input_identities(inputs: Iterable[Tuple[str, os.PathLike]]) -> Dict[Identity, str]:
    """(device, inode) of each file read, mapped to a description of it (``"input-train"``).

    ``inputs`` pairs a description with a path; paths that cannot be stat-ed are skipped (the
    run reports them elsewhere). The first description of a file is kept.
    """
    found: Dict[Identity, str] = {}
    for label, path in inputs:
        try:
            info = os.stat(path)  # follows links: the file actually read
        except (OSError, ValueError):
            continue
        found.setdefault((info.st_dev, info.st_ino), label)
    return found


def files_read(
    model: Optional[os.PathLike],
    input_train: Optional[os.PathLike],
    input_val: Optional[os.PathLike],
    context_file: Optional[os.PathLike],
) -> List[Tuple[str, Path]]:
    """``(description, path)`` of the files a run reads besides images: the model, both CSVs
    (each skipped when None: not known) and the file read for the context (NNC's
    ``net.nntxt``, :attr:`..execution.device.Device.context_file`) when there is one."""
    named = (
        ("the model file", model),
        ("the input-train file", input_train),
        ("the input-val file", input_val),
    )
    files = [(label, Path(path)) for label, path in named if path is not None]
    if context_file is not None and Path(context_file).is_file():
        context_file = Path(context_file)
        files.append((f"the {context_file.name} read for the context", context_file))
    return files


def image_inputs(role: str, paths: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """``(description, path)`` of every image a dataset names, for :func:`input_identities`."""
    for row, path in enumerate(paths):
        yield f"the image of {role} row {row} ({_show(path)})", path


def check_output(
    label: str, path: os.PathLike, inputs: Optional[Dict[Identity, str]] = None
) -> None:
    """Refuse ``path`` as an output (see the module's rules); ``inputs`` by identity."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise InfluenceError(f"{label} {_show(path)} names no file; give a CSV file name")
    problem = too_long(path)
    if problem is not None:
        raise InfluenceError(f"{label} {_show(path)} cannot be created: {problem}")
    folder = path.parent
    if not os.path.isdir(folder):
        raise InfluenceError(f"{label} folder not found: {_show(folder)}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InfluenceError(f"{label} folder is not writable: {_show(folder)}")
    problem = too_long(folder / ("x" * TEMPORARY_NAME_BYTES))
    if problem is not None:
        raise InfluenceError(
            f"{label} {_show(path)}: its temporary file beside it cannot be created: {problem}"
        )
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # a new file: it cannot be anything the run reads
    except OSError as error:
        raise InfluenceError(f"{label} {_show(path)} cannot be checked: {error.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        raise InfluenceError(
            f"{label} {_show(path)} is a symbolic link (to {_show(target)}); outputs are never "
            "written through links: give the target's own path, or remove the link"
        )
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise InfluenceError(
            f"{label} {_show(path)} exists and is {kind}; only a regular file is ever replaced: "
            "choose another name"
        )
    same = (inputs or {}).get((info.st_dev, info.st_ino))
    if same is not None:
        link = " (a hard link of it)" if info.st_nlink > 1 else ""
        raise InfluenceError(
            f"{label} {_show(path)} is {same}{link}; the run reads it, so it is never "
            "written: choose another name"
        )
    if not (info.st_mode & 0o222) or not os.access(path, os.W_OK):
        raise InfluenceError(
            f"{label} {_show(path)} exists and is read-only; make it writable to have it "
            "replaced, or choose another name"
        )


def check_outputs(
    outputs: Sequence[Tuple[str, os.PathLike]], inputs: Iterable[Tuple[str, os.PathLike]]
) -> None:
    """Check every output (``(label, path)``) against the rules and against each other.

    Only outputs that already exist can be an input, so inputs are stat-ed only then (an image
    set of 60,000 files costs about 0.1 s).
    """
    exists = any(os.path.lexists(path) for _, path in outputs)
    identities = input_identities(inputs) if exists else {}
    seen: Dict[str, str] = {}
    for label, path in outputs:
        key = os.path.normcase(os.path.abspath(os.fspath(path)))
        if key in seen:
            raise InfluenceError(f"{label} {_show(path)} is also the {seen[key]}")
        seen[key] = label
        check_output(label, path, identities)


def check_temporary_parent(folder: os.PathLike, label: str = "--temp-dir") -> None:
    """The folder in which the run's temporary folder is made: an existing, writable folder
    whose path leaves room for the files the run creates in it."""
    folder = Path(folder)
    problem = too_long(folder / ("x" * WORKSPACE_DEPTH_BYTES))
    if problem is not None:
        raise InfluenceError(
            f"{label} {_show(folder)} is too deep for the run's temporary files: {problem}"
        )
    if not os.path.isdir(folder):
        raise InfluenceError(f"{label}: temporary folder parent not found: {_show(folder)}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InfluenceError(f"{label}: temporary folder parent is not writable: {_show(folder)}")


def rebase_image_cells(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    image_paths: Dict[str, Sequence[str]],
    output: os.PathLike,
) -> List[List[str]]:
    """The table's rows with each image column's cells rewritten to resolve from ``output``'s
    folder, as the image plugin writes them (NNC resolves a CSV's paths from its own folder).

    ``image_paths`` maps an image column to the absolute path of each row's image (what the
    dataset resolved at load time); other columns are copied as they are.
    """
    folder = Path(os.path.abspath(os.fspath(output))).parent
    positions = {columns.index(name): paths for name, paths in image_paths.items()}
    result = []
    for row_index, row in enumerate(rows):
        cells = list(row)
        for position, paths in positions.items():
            cells[position] = relative_path(paths[row_index], folder)
        result.append(cells)
    return result
