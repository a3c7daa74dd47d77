"""Ctrl-C, SIGTERM and SIGHUP at any moment: recorded at once, acted on at safe points.

Python's default SIGINT handler raises ``KeyboardInterrupt`` at whatever bytecode the main
thread runs next, and that is often inside library code that cannot take it:

- inside ``import nnabla``: the import is abandoned half done, and at exit nnabla's atexit
  ``finalize`` and its C++ destructors run on a half-initialized library: a segmentation fault;
- inside the Python callbacks that nnabla's C++ forward and backward make (its Python-level
  second-order backward functions, its per-call module lookups): the C++ caller ignores the
  error, so ``Variable.backward`` returns with an exception set and Python reports
  ``SystemError: <cyfunction Variable.backward> returned a result with an exception set``;
- inside a weakref callback (importlib's module locks) or a ``__del__``: Python prints
  "Exception ignored" and the interrupt is lost, the run goes on to the end;
- inside the clean-up itself: a second Ctrl-C stops ``shutil.rmtree`` half way.

:func:`install`, called first thing by the plugin scripts, replaces the handlers of SIGINT,
SIGTERM and SIGHUP by one that only records the signal. Nothing is raised asynchronously any
more: the run stops at its next :func:`checkpoint` (between images, steps, batches, trials and
before the output is committed), raising :class:`Interrupted` from this package's own code,
where every ``finally`` clean-up runs normally. Signals that arrive during the clean-up are
recorded too, so a second Ctrl-C cannot cut the clean-up short. The exit code is
:func:`exit_code`: 130 for SIGINT and SIGTERM, 129 for SIGHUP. :func:`hold_until_exit`, the
script's last call, keeps a late signal from turning that code into a death by signal while
the interpreter shuts down.

Library users (a notebook) who never call :func:`install` keep Python's behaviour; blocks that
must not be cut short run inside :func:`deferred`, which holds signals off for their duration
and delivers a held one afterwards as the previous handler would have.

Limits: before the interpreter reaches the plugin script's first line (15-40 ms after start,
while Python itself starts), a signal has its default effect, as for any program; nothing has
been created then. A signal arriving during one long nnabla call (a step of a very large
network) takes effect when that call returns.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager, suppress

from ..errors import INTERRUPTED_EXIT_CODE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at start-up
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, Iterator, Optional, TypeVar

    T = TypeVar("T")

#: Signals handled, by name (those that exist on this platform are used).
SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK")
_EXIT_CODES = {"SIGHUP": 129}
#: Not a signal: what :func:`request_stop` records (another thread asks the run to stop).
STOP_REQUEST = 0


class Interrupted(KeyboardInterrupt):
    """Raised at a checkpoint after a handled signal; ``exit_code`` is what the run returns.

    A ``KeyboardInterrupt``, so code that already handles Ctrl-C handles it too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class _State:
    def __init__(self) -> None:
        self.pending: Optional[int] = None  # first signal received and not yet acted on
        self.received = 0  # signals received since install (or reset)
        self.installed = False
        self.shield = 0  # depth of deferred() blocks: checkpoints there do not raise


_state = _State()


def handled_signals() -> Dict[str, int]:
    """The signals this module handles on this platform, by name."""
    return {name: getattr(signal, name) for name in SIGNAL_NAMES if hasattr(signal, name)}


def signal_name(signum: int) -> str:
    if signum == STOP_REQUEST:
        return "stop request"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """130 for SIGINT and SIGTERM (and Windows' SIGBREAK), 129 for SIGHUP."""
    return _EXIT_CODES.get(signal_name(signum), INTERRUPTED_EXIT_CODE)


def _record(signum: int, _frame) -> None:
    # Only assignments: this runs between any two bytecodes of the main thread.
    if _state.pending is None:
        _state.pending = signum
    _state.received += 1


def install() -> bool:
    """Record SIGINT, SIGTERM and SIGHUP from now on instead of acting on them at once.

    Idempotent. Returns False (and changes nothing) outside the main thread, where Python
    does not allow signal handlers to be set.
    """
    if _state.installed:
        return True
    try:
        _replace_handlers()
    except ValueError:  # not the main thread
        return False
    _state.installed = True
    return True


def _replace_handlers() -> Dict[int, object]:
    """Set :func:`_record` on every handled signal; the previous handlers, by signal.

    Ignored signals stay ignored: a parent that ignores SIGINT (a background job) or SIGHUP
    (``nohup``) asked for that. Signals whose handler was not set from Python (``getsignal``
    gives None) are left alone, as they could not be restored. All or nothing: on ValueError
    nothing is changed.
    """
    previous: Dict[int, object] = {}
    try:
        for signum in handled_signals().values():
            handler = signal.getsignal(signum)
            if handler is not None and handler is not signal.SIG_IGN:
                signal.signal(signum, _record)
                previous[signum] = handler
    except ValueError:
        _restore_handlers(previous)
        raise
    return previous


def _restore_handlers(previous: Dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def request_stop() -> None:
    """Make the next checkpoint raise :class:`Interrupted` with ``signum`` :data:`STOP_REQUEST`.

    How another thread stops the main thread at a safe point, as a signal would (an MPI
    rank's watcher, when another rank stopped): the main thread may be inside a long nnabla
    call or a clean-up, where nothing may be raised. A signal already pending stays the one
    acted on. Works whether or not :func:`install` was called.
    """
    _record(STOP_REQUEST, None)


def installed() -> bool:
    return _state.installed


def pending() -> Optional[int]:
    """The signal waiting to be acted on, if any."""
    return _state.pending


def received() -> int:
    """How many handled signals arrived (a second Ctrl-C counts)."""
    return _state.received


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a signal is pending; a safe point between units of work.

    Costs one attribute test. Inside :func:`deferred` it never raises.
    """
    if _state.pending is not None and not _state.shield:
        raise Interrupted(_state.pending)


def checkpoints(items: Iterable[T]) -> Iterator[T]:
    """``items``, with a :func:`checkpoint` before each one and after the last."""
    for item in items:
        checkpoint()
        yield item
    checkpoint()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold signals off while the block runs (a clean-up, a commit of the outputs).

    With :func:`install` in effect this only keeps checkpoints in the block from raising.
    Without it (library use), the handlers are replaced for the block's duration, and a
    signal that arrived meanwhile is delivered afterwards as the previous handler would:
    ``KeyboardInterrupt`` for Python's default SIGINT handler, the default action for
    ``SIG_DFL``, a call of a Python handler, nothing for ``SIG_IGN``.
    """
    temporary: Dict[int, object] = {}
    if not _state.installed:
        with suppress(ValueError):  # not the main thread: nothing can be deferred
            temporary = _replace_handlers()
    outer_pending = _state.pending
    _state.shield += 1
    try:
        yield
    finally:
        _state.shield -= 1
        if temporary:
            arrived = _state.pending if outer_pending is None else None
            _state.pending = outer_pending
            _restore_handlers(temporary)
            if arrived is not None:
                _deliver(arrived, temporary.get(arrived))


def _deliver(signum: int, handler) -> None:
    """Act on ``signum`` as ``handler`` (a previous disposition) would have."""
    if handler is signal.SIG_IGN or handler is None:
        return
    if handler is signal.default_int_handler:
        raise Interrupted(signum)
    if handler is signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action, now that it is restored
        return
    if callable(handler):
        handler(signum, None)


def hold_until_exit() -> None:
    """Ignore the handled signals for the rest of the process: the last call of a script.

    After the run's work is done, the interpreter's shutdown takes a noticeable time (nnabla's
    atexit ``finalize``, then its C++ destructors), and late in it, after the atexit handlers,
    Python puts back the default action of every signal that has a Python handler: a signal
    then ends the process by the signal, turning a finished run (exit 0) or an interrupted one
    (130) into a death by signal (seen in the sweeps: SIGINT at the end of a run, exit -2).
    Ignored signals are left ignored by the shutdown. (Blocking them would not do:
    ``pthread_sigmask`` covers the calling thread only, and nnabla's worker threads would take
    the signal.) Never call it in a process that goes on working (a notebook, a test runner).
    """
    with suppress(ValueError):  # not the main thread
        for signum in handled_signals().values():
            signal.signal(signum, signal.SIG_IGN)


def reset() -> None:
    """Forget received signals (tests; a host that handled the interrupt itself)."""
    _state.pending = None
    _state.received = 0


def uninstall() -> None:
    """Give the handled signals Python's defaults again (tests)."""
    for name, signum in handled_signals().items():
        default: Callable = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
        signal.signal(signum, default)
    _state.installed = False
    reset()
