"""The memory a run may use (the machine's, or an address-space limit such as ``ulimit -v``),
checked before the work that would run out of it.

:func:`check_memory` refuses an allocation that cannot fit the machine (an image cache of
60,000 rows of a hostile input shape, say) with one line, instead of a ``MemoryError`` or the
kernel's out-of-memory kill half way through. :func:`check_room` keeps native code that does
not survive a failed allocation (OpenBLAS loading, HDF5 opening a file) from starting without
room for it. (Memory that runs out anyway is told from other failures by
:func:`..errors.is_out_of_memory`.)
"""

from __future__ import annotations

import mmap
import os
from contextlib import suppress
from typing import Optional

from ..errors import InfluenceError

# Address space that loading a library with OpenBLAS takes: the library and the buffer that
# OpenBLAS allocates while it loads (measured: numpy 1.26 62 MB, scipy 1.15's linalg 82 MB),
# with a margin. OpenBLAS retries a failed allocation forever: the import hangs.
OPENBLAS_LOAD_BYTES = 128 << 20
# What HDF5 allocates to open a file (its caches; measured: under 1 MB), with a margin. It does
# not check that allocation: the process dies of a segmentation fault.
HDF5_OPEN_BYTES = 16 << 20


def physical_memory() -> Optional[int]:
    """Bytes of memory this process may use: the machine's, or a lower address-space limit."""
    total = None
    with suppress(AttributeError, OSError, ValueError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = address_space_limit()
    if limit is not None:
        total = limit if total is None else min(total, limit)
    return total


def address_space_limit() -> Optional[int]:
    """This process's address-space limit in bytes (``ulimit -v``), or None when it has none."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    return soft if soft not in (resource.RLIM_INFINITY, -1) and soft > 0 else None


def check_room(nbytes: int, what: str) -> None:
    """Raise :class:`MemoryError` unless ``nbytes`` of address space are left, under this
    process's limit, to ``what``.

    For native code that fails badly when an allocation fails (see ``OPENBLAS_LOAD_BYTES``
    and ``HDF5_OPEN_BYTES``): under a tight ``ulimit -v`` it would hang or crash where the
    run must end with the out-of-memory line. Mapping ``nbytes`` of inaccessible address
    space for a moment tells whether it fits; a process without a limit has nothing to check.
    """
    if address_space_limit() is None:
        return
    try:
        probe = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE, prot=0)
    except (OSError, ValueError):
        raise MemoryError(f"no room left in the address space to {what}") from None
    probe.close()


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
