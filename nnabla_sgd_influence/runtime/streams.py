"""Standard streams that can never stop a run, and never point into the run's own files.

Two faults come from the streams a plugin is started with, not from its input:

- **A stderr that fails.** NNC closing its log pipe, a terminal gone after SIGHUP, or
  ``2>/dev/full``: the first progress bar or log line raises ``BrokenPipeError`` (or ``OSError``
  ENOSPC/EIO), the run stops as an internal error and the error line itself raises again.
  :func:`guard` wraps ``sys.stdout`` and ``sys.stderr`` so that a failing write is dropped and
  the stream is marked broken; the run goes on and its exit code still tells the outcome.
- **A closed standard descriptor.** Started with ``2>&-``, the process has no descriptor 2;
  the first file it opens (the output's temporary file) gets it, and anything written to
  descriptor 2 (nnabla's C++ messages, a crash report) lands in that file. :func:`guard`
  opens ``os.devnull`` on every closed descriptor among 0, 1 and 2 first.

Call :func:`guard` first thing in the plugin scripts, with :func:`.signals.install`.
"""

from __future__ import annotations

import io
import os
import sys

_STANDARD_DESCRIPTORS = (0, 1, 2)


class SafeStream(io.TextIOBase):
    """A text stream that forwards to ``target`` until a write fails, then drops everything."""

    def __init__(self, target) -> None:
        super().__init__()
        self._target = target
        self.broken = target is None

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._target.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._target.flush()
            except (OSError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        if self.broken:
            return False
        try:
            return bool(self._target.isatty())
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        if self._target is None:
            raise io.UnsupportedOperation("no underlying stream")
        return self._target.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    @property
    def errors(self):  # type: ignore[override]
        return getattr(self._target, "errors", "strict")

    def __getattr__(self, name: str):
        # buffer, mode, line_buffering...: whatever the wrapped stream offers
        if self._target is None:
            raise AttributeError(name)
        return getattr(self._target, name)


def open_missing_descriptors() -> list:
    """Open ``os.devnull`` on each of descriptors 0, 1, 2 that is closed; those opened."""
    opened = []
    for fd in _STANDARD_DESCRIPTORS:
        try:
            os.fstat(fd)
        except OSError:
            flags = os.O_RDONLY if fd == 0 else os.O_WRONLY
            new = os.open(os.devnull, flags)
            if new != fd:  # lower descriptors were closed too and are being filled in order
                os.dup2(new, fd)
                os.close(new)
            opened.append(fd)
    return opened


def guard() -> None:
    """Fill closed standard descriptors and make ``sys.stdout``/``sys.stderr`` failure-proof.

    Idempotent.
    """
    open_missing_descriptors()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, SafeStream):
            setattr(sys, name, SafeStream(stream))
