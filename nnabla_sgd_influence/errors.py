"""The one exception type that reaches users as a single line, and how that line quotes data.

A cell, a token of a network definition or a library's message can be megabytes long (a CSV
cell of 10 MB, an ``.nntxt`` whose one token is a gigabyte of padding); quoting it whole makes
a "one line" error of that size. :func:`excerpt` shortens one quoted piece of user data where
it is put into a message, :func:`excerpt_path` a path (keeping its end, where the file name is);
:func:`one_line` is the last guard where the line is printed.
"""

from __future__ import annotations

import os

EXCERPT_CHARS = 60  # a quoted piece of user data
LINE_CHARS = 1000  # a whole error line, file paths included
_ELLIPSIS = "..."


class InfluenceError(Exception):
    """A problem with the user's input (file, row, column or layer) that stops the run.

    The plugins print ``str(error)`` on one line and exit non-zero; no traceback.
    """


class RunStopped(Exception):
    """This process stops because another one found the problem and reported it (rank 0 of
    an MPI job); it exits with ``exit_code`` and prints nothing."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"stopped with exit code {exit_code}")
        self.exit_code = exit_code


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
