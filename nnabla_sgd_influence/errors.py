"""The one exception type that reaches users as a single line, and how that line quotes data.

A cell, a token of a network definition or a library's message can be megabytes long (a CSV
cell of 10 MB, an ``.nntxt`` whose one token is a gigabyte of padding); quoting it whole makes
a "one line" error of that size. :func:`excerpt` shortens one quoted piece of user data where
it is put into a message, :func:`excerpt_path` a path (keeping its end, where the file name is);
:func:`one_line` is the last guard where the line is printed.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import List, Tuple

EXCERPT_CHARS = 60  # a quoted piece of user data
LINE_CHARS = 1000  # a whole error line, file paths included
_ELLIPSIS = "..."


class InfluenceError(Exception):
    """A problem with the user's input (file, row, column or layer) that stops the run.

    The plugins print ``str(error)`` on one line and exit non-zero; no traceback.
    """


DEBUG_VARIABLE = "NNSI_DEBUG"
INTERRUPTED_EXIT_CODE = 130  # SIGINT and SIGTERM (SIGHUP: 129, see runtime/signals.py)
# Third-party packages the plugins import: a missing one is the user's setup, not our bug.
REQUIREMENTS = {"nnabla", "nnabla_ext", "numpy", "scipy", "pandas", "PIL", "tqdm", "h5py", "google"}
OUT_OF_MEMORY = (
    "error: out of memory: the run needs more memory than this process may use (the "
    "machine's, or a limit such as ulimit -v)"
)
# What the dynamic loader and the C library say when no memory (or address space) is left;
# an import then fails with an ImportError or OSError carrying these words, and a thread
# whose stack cannot be mapped with a RuntimeError.
_OUT_OF_MEMORY_WORDS = ("failed to map segment", "cannot allocate memory", "can't start new thread")


class RunStopped(Exception):
    """This process stops because another one stopped the run (a rank of an MPI job): it
    exits with ``exit_code``; ``line`` is what rank 0 prints for it."""

    def __init__(self, exit_code: int, line: str = "") -> None:
        super().__init__(line or f"stopped with exit code {exit_code}")
        self.exit_code = exit_code
        self.line = line


def closing_line(error: BaseException) -> Tuple[str, int]:
    """The one line a run that ended with ``error`` prints, and its exit code.

    ``error: ...`` and 1 for bad input and resources, ``interrupted`` and 130 (129 for
    SIGHUP) for a signal, ``internal error: ...`` and 2 for a bug.
    """
    if isinstance(error, InfluenceError):
        return f"error: {one_line(error)}", 1
    if isinstance(error, RunStopped):
        return error.line, error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", getattr(error, "exit_code", INTERRUPTED_EXIT_CODE)
    if isinstance(error, ModuleNotFoundError) and _package(error) in REQUIREMENTS:
        python = sys.executable or "this Python"
        return (
            f"error: {python} lacks the package '{error.name}': install it "
            f"({python} -m pip install {_package(error)})",
            1,
        )
    if caused_by_interrupt(error):  # with signals.install() no longer raised in nnabla
        return "interrupted", INTERRUPTED_EXIT_CODE
    if is_out_of_memory(error):  # a MemoryError, or a library that could not be mapped
        return OUT_OF_MEMORY, 1
    return (
        f"internal error: {type(error).__name__}: {one_line(error)} "
        f"(set {DEBUG_VARIABLE}=1 for the traceback)",
        2,
    )


def _package(error: ModuleNotFoundError) -> str:
    return (error.name or "").split(".")[0]


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, means that memory ran out.

    A :class:`MemoryError`; an ``OSError`` with ``ENOMEM``; an ``ImportError`` or ``OSError``
    whose message is the loader's "failed to map segment from shared object" or the C
    library's "cannot allocate memory" (a library that cannot be mapped under an address-space
    limit such as ``ulimit -v``; numpy re-raises it under a message of its own); Python's
    "can't start new thread" (no room for the thread's stack).
    """
    return any(_means_out_of_memory(link) for link in chain(error))


def _means_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or getattr(error, "errno", None) == errno.ENOMEM:
        return True
    text = str(error).lower()
    return isinstance(error, (ImportError, OSError, RuntimeError)) and any(
        words in text for words in _OUT_OF_MEMORY_WORDS
    )


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt lies under ``error``.

    An interrupt that arrives while nnabla runs one of its Python callbacks (the backward
    functions of a second-order pass) surfaces as a SystemError ("returned a result with an
    exception set") whose chain ends in the KeyboardInterrupt, on every nnabla 1.32-1.39.
    """
    return any(isinstance(link, KeyboardInterrupt) for link in chain(error))


def chain(error: BaseException) -> List[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, in that order."""
    links: List[BaseException] = []
    while error is not None and all(error is not link for link in links):
        links.append(error)
        error = error.__cause__ or error.__context__
    return links


def _flatten(text: object) -> str:
    """One line: runs of whitespace (newlines included) and control characters become a space."""
    cleaned = "".join(c if c.isprintable() else " " for c in str(text))
    return " ".join(cleaned.split())


def excerpt(text: object, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line; beyond ``limit`` characters, its start and its full length.

    >>> excerpt("x" * 100, 10)
    'xxxxxxxxxx... (100 characters)'
    """
    raw = str(text)
    flat = _flatten(raw)
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}{_ELLIPSIS} ({len(raw)} characters)"


def excerpt_path(path: object, limit: int = EXCERPT_CHARS) -> str:
    """``path`` on one line; beyond ``limit`` characters, ``...`` and its end.

    The end names the file and the folders nearest to it, which is what tells one input from
    another; the cut is moved to a folder separator when that drops at most a third of it.

    >>> excerpt_path("/home/user/" + "projects/" * 8 + "mnist/train.csv", 30)
    '.../projects/mnist/train.csv'
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    flat = _flatten(text)
    if len(flat) <= limit:
        return flat
    tail = flat[len(flat) - (limit - len(_ELLIPSIS)) :]
    separators = [at for at in (tail.find("/"), tail.find("\\")) if at > 0]
    if separators and min(separators) <= len(tail) // 3:
        tail = tail[min(separators) :]
    return _ELLIPSIS + tail


def one_line(text: object, limit: int = LINE_CHARS) -> str:
    """``text`` on one line of at most ``limit`` characters.

    A longer line keeps its beginning and its end (where messages say what is wrong) and
    drops the middle.
    """
    flat = _flatten(text)
    if len(flat) <= limit:
        return flat
    marker = f" {_ELLIPSIS} "
    head = (limit - len(marker)) * 2 // 3
    tail = limit - len(marker) - head
    return flat[:head] + marker + flat[len(flat) - tail :]
