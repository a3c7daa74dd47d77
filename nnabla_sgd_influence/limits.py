"""Limits of arguments and of the machine, checked before the work that would hit them.

**Seeds.** Trial ``i`` seeds nnabla (``nn.seed``) and numpy with ``seed + i``. ``nn.seed`` takes
a C ``int`` and numpy a 32-bit unsigned value, so every trial's seed must lie in
[0, 2**31 - 1]: a negative seed stopped the first trial with ``ValueError``, a seed of 2**31 or
more with ``OverflowError``, and ``-s 2147483647 -nt 2`` only the second trial, after the first
one's whole work. :func:`check_seeds` refuses all of these before any work.

**Memory.** :func:`check_memory` refuses an allocation that cannot fit the machine (an image
cache of 60,000 rows of a hostile input shape, say) with one line, instead of a
``MemoryError`` or the kernel's out-of-memory kill half way through.
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Optional

from .errors import InfluenceError

SEED_MIN = 0
SEED_MAX = 2**31 - 1  # nn.seed takes a C int


def check_seeds(seed: int, n_trials: int) -> None:
    """Every trial's seed (``seed`` ... ``seed + n_trials - 1``) must be in [0, 2**31 - 1]."""
    if n_trials < 1:
        raise InfluenceError(f"n_trials must be a positive integer, got {n_trials!r}")
    last = seed + n_trials - 1
    if seed < SEED_MIN or last > SEED_MAX:
        if n_trials == 1 or seed < SEED_MIN or seed > SEED_MAX:
            raise InfluenceError(f"seed must be in [{SEED_MIN}, {SEED_MAX}], got {seed}")
        raise InfluenceError(
            f"seed {seed} with {n_trials} trials needs seeds up to {last}, above "
            f"{SEED_MAX}: use a seed of at most {SEED_MAX - n_trials + 1}"
        )


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
