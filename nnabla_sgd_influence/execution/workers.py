"""Trials in local worker processes: every core busy, the same bytes as one process.

Trials are independent (each retrains from the ``.nnp`` with its own seed), so ``--workers N``
runs them in N processes started afresh (``spawn``, as on Windows, where NNC runs) and
averages their scores in trial order: the result is bit for bit what one process computes.

The parent keeps the one progress display, the signal handling and the temporary folder, and
talks to each worker through a pipe of its own: it hands out one trial at a time, the worker
reports each step and sends the trial's result back. How the ends are kept clean:

- **Start-up.** The inputs (model, datasets) are written once to a file in the run's
  temporary folder, which every worker reads; ``Process.start()`` only sends a few hundred
  bytes through multiprocessing's own pipe, so it never waits for a worker (a worker killed
  while it reads its inputs could otherwise keep the parent writing forever).
- **Signals.** SIGINT, SIGTERM and SIGHUP are the parent's to act on. On POSIX it blocks them
  while it creates a worker (and multiprocessing's resource tracker), so the new process
  starts with them blocked, through its interpreter's start-up, until its first line ignores
  them; the parent gets a signal that arrived meanwhile as soon as it unblocks it. (Windows
  has no signal mask: there the worker ignores them from its first line.) The parent ends
  workers with SIGKILL, which they cannot ignore.
- **A dead worker** closes its pipe: the parent waits on every pipe and every process at
  once, so it notices at once, and a signal pending in the parent explains a death first.
- **A dead parent** (SIGKILL, NNC's stop button, Task Manager): every worker watches the
  parent's life from a thread, and when it ends the worker lets go of the console (NNC waits
  for stdout and stderr to close), removes the run's temporary folder, which nobody else
  will, and exits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import signal
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

from ..arguments import InfluenceArguments
from ..errors import InfluenceError
from ..runtime.oserrors import os_error_line
from ..runtime.progress import SILENT, Progress
from ..runtime.signals import checkpoint, handled_signals

if TYPE_CHECKING:  # numpy is not needed before a worker's first line
    from ..data.datasets import Batches
    from ..influence.results import InfluenceResult
    from ..influence.trials import Trials
    from ..nnp.model import NnpModel

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the parent looks for a signal while nothing else happens
MESSAGES_PER_TURN = 256  # read from one worker before the others (and signals) get a look
INPUTS_NAME = "worker_inputs.pickle"  # in the run's temporary folder, until every worker read it
ORPHAN_CLEAN_UP_SECONDS = 10.0  # how long an orphaned worker tries to remove the folder
OUT_OF_MEMORY = (
    "out of memory in a worker process: the input is too large for this machine with this "
    "many --workers (each holds its own copy of the data)"
)


def physical_cores() -> int:
    """Cores this process may run on, hyper-threads counted once where the system says so.

    Linux: the (package, core) pairs of the CPUs in this process's affinity mask. Elsewhere
    (Windows, macOS) the logical processors, which the standard library alone can tell.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus) or 1
        cores.add((package, core))
    return max(1, len(cores))


def default_workers(n_trials: int) -> int:
    """One per physical core, never more than the trials to run."""
    return max(1, min(physical_cores(), n_trials))


def units_of_trial(n_train: int, n_val: int, arguments: InfluenceArguments) -> int:
    """Progress units of one trial: its retraining steps, validation batches, retrace steps."""
    steps = math.ceil(n_train / arguments.batch_size) * arguments.epochs
    return 2 * steps + math.ceil(n_val / arguments.batch_size)


@dataclass
class _Work:
    """What every worker needs, read once from the inputs file when it starts."""

    trials: Trials
    device: Tuple[str, str]  # (context name, device id) of the run's Device


# ---------------------------------------------------------------------------------------------
# The worker's side. Messages to the parent: ("ready",) once the inputs are loaded, ("unit",)
# per step, ("done", trial, TrialResult), ("error", trial or None, kind, message). From the
# parent: the next trial's index, or None to stop.


class _ParentGone(BaseException):
    """The pipe to the parent is closed: the parent has ended (not an error to report).

    A BaseException, so that no ``except Exception`` on the way lets a trial go on."""


class _Link:
    """A worker's end of its pipe; a closed pipe raises :class:`_ParentGone`."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def send(self, message: object) -> None:
        try:
            self.connection.send(message)
        except (EOFError, OSError):
            raise _ParentGone from None

    def receive(self) -> object:
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            raise _ParentGone from None

    def tell(self, message: tuple) -> None:
        """Send ``message`` if the parent is still there to read it."""
        with suppress(_ParentGone):
            self.send(message)


class _PipeProgress(Progress):
    """A worker's progress: one message per item, for the parent's single display."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def track(self, items: Sequence, phase: str) -> Iterator:
        for item in items:
            yield item
            self.link.send(("unit",))


def _worker(inputs: str, orphan_folder: Optional[str], connection) -> None:
    """A worker's life: load the inputs, then run the trials it is given until told to stop.

    Nothing it does prints a traceback: every failure goes to the parent as a message, and a
    parent that is gone ends the worker quietly.
    """
    import multiprocessing

    link = _Link(connection)
    watcher = None
    try:
        _ignore_stop_signals()
        watcher = _watch_parent(orphan_folder)
        _serve(Path(inputs), link)
    except _ParentGone:
        pass
    except BaseException as error:  # noqa: BLE001 - told to the parent, never printed
        link.tell(("error", None, *_error_kind(error)))
    finally:
        parent = multiprocessing.parent_process()
        if watcher is not None and parent is not None and not parent.is_alive():
            watcher.join(ORPHAN_CLEAN_UP_SECONDS + 5)  # it cleans up and ends this process


def _ignore_stop_signals() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP (the parent decides), then unblock them.

    The parent created this process with them blocked (POSIX), so none could act before this
    line; setting SIG_IGN discards those that arrived meanwhile.
    """
    stop = list(handled_signals().values())
    for signum in stop:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)


def _serve(inputs: Path, link: _Link) -> None:
    """Load the inputs, say so, and run each trial the parent sends until it sends None."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s [%(name)s][%(levelname)s]: %(message)s"
    )
    with open(inputs, "rb") as stream:
        work: _Work = pickle.load(stream)
    import nnabla as nn

    from .device import create_context

    scope = nn.context_scope(create_context(*work.device))
    trials = dataclasses.replace(work.trials, progress=_PipeProgress(link))
    link.send(("ready",))
    with scope:
        while True:
            index = link.receive()
            if index is None:
                return
            try:
                result = trials.run(index)
            except _ParentGone:
                raise
            except BaseException as error:  # noqa: BLE001 - told to the parent
                link.tell(("error", index, *_error_kind(error)))
                return
            link.send(("done", index, result))


def _error_kind(error: BaseException) -> Tuple[str, str]:
    """(kind, message) of a worker's failure: "bad input" for what the user can act on."""
    if isinstance(error, InfluenceError):
        return "bad input", str(error)
    if isinstance(error, MemoryError):
        return "bad input", OUT_OF_MEMORY
    return type(error).__name__, str(error)


def _watch_parent(folder: Optional[str]):
    """A thread that ends this worker when its parent ends (the thread, or None)."""
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return None
    watcher = threading.Thread(
        target=_end_when_orphaned, args=(parent.sentinel, folder), name="parent-watch", daemon=True
    )
    watcher.start()
    return watcher


def _end_when_orphaned(parent_sentinel, folder: Optional[str]) -> None:
    """Wait for the parent's end; then release the console, remove the folder and exit.

    The sentinel is the parent's process handle (Windows) or a pipe whose only writer is the
    parent (POSIX), ready when the parent has ended however it ended.
    """
    from multiprocessing.connection import wait

    wait([parent_sentinel])
    _release_console()
    if folder is not None:
        _remove_orphaned_folder(Path(folder))
    os._exit(1)


def _release_console() -> None:
    """Point stdin, stdout and stderr at the null device, so that whoever reads the dead
    parent's output (NNC) sees it end."""
    with suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for descriptor in (0, 1, 2):
            with suppress(OSError):
                os.dup2(null, descriptor)
        os.close(null)


def _remove_orphaned_folder(folder: Path) -> None:
    """Remove the dead parent's temporary folder, again while a worker still writes into it.

    Once the folder itself is gone nothing can be created in it, so the last removal that
    succeeds leaves nothing behind.
    """
    import shutil
    import time

    deadline = time.monotonic() + ORPHAN_CLEAN_UP_SECONDS
    while folder.exists() and time.monotonic() < deadline:
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# The parent's side.


@dataclass
class _Worker:
    """One worker process, the parent's end of its pipe, and what it is doing."""

    process: object
    connection: object
    ready: bool = False
    trial: Optional[int] = None  # the trial it runs
    stopped: bool = False  # told to stop: its end is expected


def run_trials_in_processes(
    model: NnpModel,
    train: Batches,
    val: Batches,
    arguments: InfluenceArguments,
    folder: Path,
    *,
    workers: int,
    device: Tuple[str, str] = ("cpu", "0"),
    keep_temp: bool = False,
    progress: Progress = SILENT,
) -> InfluenceResult:
    """Every trial of ``arguments`` in ``workers`` processes, each computing on ``device``
    (context name, device id); scores averaged in trial order."""
    from ..influence.trials import Trials, average_trials

    folder = Path(folder)
    trials = Trials(model, train, val, arguments, folder, keep_temp)
    inputs = write_inputs(_Work(trials, device), folder)
    total = arguments.n_trials * units_of_trial(len(train), len(val), arguments)
    display = iter(
        progress.track(range(total), f"{arguments.n_trials} trials on {workers} workers")
    )
    started: List[_Worker] = []
    try:
        _start_workers(started, workers, inputs, None if keep_temp else folder)
        results = _Dispatcher(started, arguments.n_trials, display, inputs).run()
    finally:
        _end(started)
        for _ in display:  # close the display
            pass
    return average_trials(results, train)


def write_inputs(work: _Work, folder: Path) -> Path:
    """Pickle the workers' inputs into ``folder``; a full disk is one line naming the file."""
    path = folder / INPUTS_NAME
    try:
        with open(path, "wb") as stream:
            pickle.dump(work, stream, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as error:
        with suppress(OSError):
            path.unlink()
        raise InfluenceError(
            os_error_line(
                error, path, "write", "choose another place for temporary files with --temp-dir"
            )
        ) from None
    return path


def _start_workers(
    started: List[_Worker], count: int, inputs: Path, orphan_folder: Optional[Path]
) -> None:
    """Start ``count`` workers, appending each to ``started`` as soon as it exists."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    if os.name == "posix":
        from multiprocessing import resource_tracker

        with _stop_signals_blocked():  # it outlives the run: SIGHUP must not end it
            resource_tracker.ensure_running()
    folder = None if orphan_folder is None else str(orphan_folder)
    for _ in range(count):
        checkpoint()
        ours, theirs = spawn.Pipe()
        process = spawn.Process(
            target=_worker, args=(str(inputs), folder, theirs), daemon=True, name="sgd-influence"
        )
        try:
            with _stop_signals_blocked():
                process.start()
                started.append(_Worker(process, ours))
        except OSError as error:
            ours.close()
            raise InfluenceError(
                os_error_line(error, None, "start a worker process", "use fewer --workers")
            ) from None
        finally:
            theirs.close()  # the worker's own end: its death must close the pipe


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGHUP in this thread for the block (POSIX; elsewhere
    nothing): a process created meanwhile starts with them blocked, and this one receives
    them when they are unblocked (or another thread does, which records them alike)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, list(handled_signals().values()))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Dispatcher:
    """Hands the trials out one at a time, gathers the results; any failure ends the run."""

    def __init__(self, workers: List[_Worker], n_trials: int, display, inputs: Path) -> None:
        self.workers = workers
        self.n_trials = n_trials
        self.display = display
        self.inputs = inputs
        self.queued = iter(range(n_trials))
        self.results: Dict[int, object] = {}

    def run(self) -> List:
        """Every trial's result, in trial order."""
        from multiprocessing.connection import wait

        while len(self.results) < self.n_trials:
            checkpoint()
            running = [w for w in self.workers if not w.stopped]
            if not running:  # every worker was told to stop with trials missing: a bug
                raise RuntimeError("the worker processes ended before every trial was done")
            watched = [w.connection for w in running] + [w.process.sentinel for w in running]
            ready = set(wait(watched, timeout=POLL_SECONDS))
            for worker in running:
                if worker.connection in ready or worker.process.sentinel in ready:
                    self._read(worker)
        return [self.results[index] for index in range(self.n_trials)]

    def _read(self, worker: _Worker) -> None:
        """Act on the messages waiting from ``worker``; its end, unasked, ends the run."""
        try:
            for _ in range(MESSAGES_PER_TURN):
                if worker.stopped or not worker.connection.poll():
                    return
                self._act_on(worker, worker.connection.recv())
        except (EOFError, OSError):
            self._report_death(worker)

    def _act_on(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "unit":
            next(self.display, None)
        elif kind == "ready":
            worker.ready = True
            if all(w.ready for w in self.workers):
                with suppress(OSError):
                    self.inputs.unlink()  # every worker holds its copy now
            self._hand_out(worker)
        elif kind == "done":
            self.results[message[1]] = message[2]
            self._hand_out(worker)
        else:
            _raise(*message[1:])

    def _hand_out(self, worker: _Worker) -> None:
        """Send ``worker`` the next trial, or tell it to stop when none is left."""
        worker.trial = next(self.queued, None)
        worker.connection.send(worker.trial)
        worker.stopped = worker.trial is None

    def _report_death(self, worker: _Worker) -> None:
        """A worker ended unasked: a signal this process received explains it; else one line."""
        checkpoint()  # the whole group was signalled: the run was interrupted
        worker.process.join(timeout=30)
        checkpoint()
        raise InfluenceError(
            f"a worker process {_how_it_ended(worker.process.exitcode)} after "
            f"{len(self.results)} of {self.n_trials} trials; if the system ran out of memory, "
            "use fewer --workers (each holds its own copy of the data)"
        )


def _how_it_ended(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode >= 0:
        return f"ended with exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"was killed by {name}"


def _raise(index: Optional[int], kind: str, message: str) -> None:
    where = "" if index is None else f" (trial {index + 1})"
    if kind == "bad input":
        raise InfluenceError(message)
    raise RuntimeError(f"{kind} in a worker process{where}: {message}")


def _end(workers: List[_Worker]) -> None:
    """Kill every worker that still runs and wait for it (its files are the parent's to
    remove); SIGKILL, because workers ignore the other signals."""
    for worker in workers:
        if worker.process.is_alive():
            with suppress(OSError):
                worker.process.kill()
    for worker in workers:
        worker.process.join(timeout=30)
        worker.connection.close()
        with suppress(ValueError):  # still running after 30 s: left to the system
            worker.process.close()
