"""Operating-system failures as one line that names the path: a full disk is not a bug.

A full disk, a quota, a file-size limit (``ulimit -f``), a name or path over the system's
limits, a read-only file system: each is a resource problem of the user's machine, reported
like bad input (exit code 1) with the path and the reason, never as an internal error.

:func:`reported` is the context manager to put around a write (or any file operation);
:func:`os_error_line` builds the line.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

from ..errors import InfluenceError, excerpt, excerpt_path

PathLike = Union[str, "os.PathLike[str]"]

_REASONS = {
    "ENOSPC": "no space left on the device",
    "EDQUOT": "the disk quota is exceeded (no space left for this user)",
    "EFBIG": "file too large: over the file-size limit (ulimit -f) or the file system's maximum",
    "ENAMETOOLONG": "a name in the path, or the whole path, is longer than the system allows",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EROFS": "the file system is read-only",
    "ENOENT": "no such file or folder",
    "ENOTDIR": "a part of the path is not a folder",
    "EISDIR": "it is a folder",
    "EEXIST": "it already exists",
    "EMFILE": "too many open files (ulimit -n)",
    "ENFILE": "too many open files in the system",
    "EIO": "input/output error (a failing disk or a lost network share)",
    "ELOOP": "too many levels of symbolic links",
    "ENOMEM": "out of memory",
    "ETXTBSY": "the file is busy",
    "EXDEV": "the path is on another device",
    "ESTALE": "stale network file handle",
}
_BY_NUMBER = {getattr(errno, name): text for name, text in _REASONS.items() if hasattr(errno, name)}

# numpy's ndarray.tofile (used by np.save on real files) reports a short write without errno.
_SHORT_WRITE = "requested and"


def reason(error: BaseException) -> str:
    """Why ``error`` happened, in a few words (the system's text for unlisted errors)."""
    number = getattr(error, "errno", None)
    if number in _BY_NUMBER:
        return _BY_NUMBER[number]
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    if number is None and _SHORT_WRITE in str(error):
        return "the write was cut short: no space left on the device, or a file-size limit"
    return excerpt(text, 120)


def is_resource_problem(error: BaseException) -> bool:
    """Whether ``error`` is about space, limits or the file system rather than the input."""
    names = ("ENOSPC", "EDQUOT", "EFBIG", "ENAMETOOLONG", "EROFS", "EMFILE", "ENFILE", "EIO")
    numbers = {getattr(errno, n) for n in names if hasattr(errno, n)}
    return getattr(error, "errno", None) in numbers or _SHORT_WRITE in str(error)


def os_error_line(
    error: BaseException, path: Optional[PathLike], action: str, hint: str = ""
) -> str:
    """``cannot <action> <path>: <reason>[; <hint>]``; the path is the error's own if it has one.

    ``error.filename`` wins over ``path`` because it names the file that actually failed
    (a temporary file inside the named folder, say); both are cut to a readable length.
    """
    where = getattr(error, "filename", None) or path
    subject = f" {excerpt_path(where)}" if where is not None else ""
    line = f"cannot {action}{subject}: {reason(error)}"
    return f"{line}; {hint}" if hint else line


@contextmanager
def reported(path: Optional[PathLike], action: str, hint: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into an :class:`InfluenceError` of one line."""
    try:
        yield
    except OSError as error:
        raise InfluenceError(os_error_line(error, path, action, hint)) from None


def filesystem_limits(folder: PathLike) -> Tuple[int, int]:
    """(longest name in bytes, longest path in bytes) for files in ``folder``.

    From ``pathconf`` where the system has it (POSIX); 255 and 4096 otherwise, or 255 and 260
    on Windows without long-path support.
    """
    default = (255, 260) if os.name == "nt" else (255, 4096)
    try:
        name_max = os.pathconf(os.fspath(folder), "PC_NAME_MAX")
        path_max = os.pathconf(os.fspath(folder), "PC_PATH_MAX")
    except (AttributeError, OSError, ValueError):
        return default
    return (name_max if name_max > 0 else default[0], path_max if path_max > 0 else default[1])


def encoded_length(text: str) -> int:
    """Length of ``text`` as the file system stores it (bytes of the file-system encoding)."""
    return len(os.fsencode(text))


def too_long(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be created in its (existing) folder, or None if its length is fine."""
    path = Path(os.path.abspath(os.fspath(path)))
    folder = path.parent
    name_max, path_max = filesystem_limits(folder if os.path.isdir(folder) else Path.cwd())
    name = encoded_length(path.name)
    if name > name_max:
        return f"its name is {name} bytes long, the limit of the file system is {name_max}"
    total = encoded_length(str(path))
    if total >= path_max:
        return f"the path is {total} bytes long, the system's limit is {path_max - 1}"
    return None
