"""Limits of the machine, checked before the work that would hit them.

:func:`check_memory` refuses an allocation that cannot fit the machine (an image cache of
60,000 rows of a hostile input shape, say) with one line, instead of a ``MemoryError`` or the
kernel's out-of-memory kill half way through. (The seeds' limit is
:class:`~.arguments.InfluenceArguments`'.)
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Optional

from .errors import InfluenceError


def physical_memory() -> Optional[int]:
    """Bytes of memory this process may use: the machine's, or a lower address-space limit."""
    total = None
    with suppress(AttributeError, OSError, ValueError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            total = soft if total is None else min(total, soft)
    except (ImportError, OSError, ValueError):
        pass
    return total


def _human(size: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"


def check_memory(nbytes: float, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when that exceeds the memory available."""
    available = physical_memory()
    if available is not None and nbytes > available:
        raise InfluenceError(
            f"{what} needs {_human(nbytes)} of memory, more than the {_human(available)} "
            "this process can use"
        )
