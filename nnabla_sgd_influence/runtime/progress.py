"""How a run shows its progress: one object handed to the stages that loop.

A stage wraps its loop in ``progress.track(items, phase)``; it never knows whether bars are
drawn, a callback is called or nothing happens. :class:`Progress` reports nothing,
:class:`BarProgress` draws tqdm bars on stderr (the plugins' choice) and
:class:`CallbackProgress` calls ``callback(phase, done, total)`` after every item (for
notebooks and other front ends).
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
_OPEN_BARS: weakref.WeakSet = weakref.WeakSet()  # bars of loops that have not ended yet


class Progress:
    """Reports nothing."""

    def track(self, items: Sequence[Item], phase: str) -> Iterator[Item]:
        """Iterate over ``items``, reporting progress through the phase ``phase``."""
        return iter(items)

    def for_trial(self, index: int, n_trials: int) -> Progress:
        """The progress of trial ``index`` (0-based) of ``n_trials``."""
        return self


class BarProgress(Progress):
    """A tqdm bar per phase on stderr, captioned with the trial ("trial 2/6 retrace")."""

    def __init__(self, caption: str = "") -> None:
        self.caption = caption

    def track(self, items: Sequence[Item], phase: str) -> Iterator[Item]:
        from tqdm import tqdm

        bar = tqdm(items, desc=f"{self.caption} {phase}".strip(), leave=False)
        _OPEN_BARS.add(bar)
        return iter(bar)

    def for_trial(self, index: int, n_trials: int) -> Progress:
        return BarProgress(f"trial {index + 1}/{n_trials}")


class CallbackProgress(Progress):
    """Calls ``callback(phase, done, total)`` after each item; ``phase`` names the trial."""

    def __init__(self, callback: Callable[[str, int, int], None], caption: str = "") -> None:
        self.callback = callback
        self.caption = caption

    def track(self, items: Sequence[Item], phase: str) -> Iterator[Item]:
        name = f"{self.caption} {phase}".strip()
        total = len(items)
        for done, item in enumerate(items, start=1):
            yield item
            self.callback(name, done, total)

    def for_trial(self, index: int, n_trials: int) -> Progress:
        return CallbackProgress(self.callback, f"trial {index + 1}/{n_trials}")


SILENT = Progress()


def without_monitor_thread() -> None:
    """Have tqdm start no monitor thread (process-wide; the plugins' runs call this).

    The thread only lowers the refresh rate of bars whose items come slowly; every bar,
    even a disabled one, starts it, and where no thread can be started (no room for its stack
    under ``ulimit -v``) tqdm prints a warning of several lines instead.
    """
    from tqdm import tqdm

    tqdm.monitor_interval = 0


def close_open_bars() -> None:
    """Clear the bars of loops an error left, so that the error line starts a line of its own."""
    for bar in list(_OPEN_BARS):
        bar.close()
    _OPEN_BARS.clear()


def as_progress(progress: bool | Progress | Callable[[str, int, int], None] | None) -> Progress:
    """``True``: bars; ``False``/``None``: nothing; a callable: :class:`CallbackProgress`."""
    if isinstance(progress, Progress):
        return progress
    if progress is True:
        return BarProgress()
    if progress is None or progress is False:
        return Progress()
    if callable(progress):
        return CallbackProgress(progress)
    raise TypeError(f"progress must be a bool, a Progress or a callable, got {progress!r}")
