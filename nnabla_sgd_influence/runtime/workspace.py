"""The one temporary folder of a run, removed however the run ends.

Retraining may store parameters on disk (mode ``exact``); all of it goes into this folder so
that success, an error and Ctrl-C all leave nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InfluenceError, excerpt_path
from . import signals
from .oserrors import os_error_line

log = logging.getLogger(__name__)

PREFIX = "sgd_influence_"


@contextmanager
def workspace(parent: Optional[Path] = None, keep: bool = False) -> Iterator[Path]:
    """Create a fresh temporary folder (under ``parent`` if given) and remove it on exit.

    With ``keep`` the folder stays and its location is logged, for debugging.
    """
    if parent is not None:
        parent = Path(parent)
        if not parent.is_dir():
            raise InfluenceError(f"temporary folder parent not found: {excerpt_path(parent)}")
    try:
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=None if parent is None else parent))
    except OSError as error:
        where = parent if parent is not None else tempfile.gettempdir()
        raise InfluenceError(
            os_error_line(error, where, "create a temporary folder in", "see --temp-dir")
        ) from None
    log.debug("temporary folder: %s", folder)
    try:
        yield folder
    finally:
        if keep:
            log.info("temporary files kept in %s", folder)
        else:
            remove_folder(folder)


def remove_folder(folder: Path) -> None:
    """Remove ``folder`` and everything in it; a failure is logged, not raised."""

    def report(_function, path, _excinfo) -> None:
        log.warning("could not remove temporary file %s", path)

    with signals.deferred():  # a second Ctrl-C cannot cut the removal short
        shutil.rmtree(folder, onerror=report)
