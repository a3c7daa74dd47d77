"""Trials in local worker processes: every core busy, the same bytes as one process.

Trials are independent (each retrains from the ``.nnp`` with its own seed), so ``--workers N``
runs them in N processes started afresh (``spawn``, as on Windows, where NNC runs) and
averages their scores in trial order: the result is bit for bit what one process computes.

The parent keeps the one progress display (workers report each step through a queue), the
signal handling and the temporary folder: on Ctrl-C, a worker's error or a worker that dies,
it ends every worker before the run's clean-up removes the folder they wrote in. Workers
ignore SIGINT and SIGHUP themselves (the terminal sends them to the whole process group);
the parent decides.
"""

from __future__ import annotations

import logging
import math
import os
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .arguments import InfluenceArguments
from .errors import InfluenceError
from .progress import SILENT, Progress
from .results import InfluenceResult
from .signals import checkpoint

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the parent looks for a signal or a dead worker
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
    """What every worker needs, sent once when it starts."""

    model: object
    train: object
    val: object
    arguments: InfluenceArguments
    folder: Path
    keep_temp: bool
    context: Tuple[str, str]  # (name, device id)


class _QueueProgress(Progress):
    """A worker's progress: one event per item, for the parent's single display."""

    def __init__(self, events) -> None:
        self.events = events

    def track(self, items: Sequence, phase: str) -> Iterator:
        for item in items:
            yield item
            self.events.put(("unit",))


def _work(work: _Work, tasks, events) -> None:
    """A worker's life: run the trials it is given until told to stop."""
    import signal

    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s [%(name)s][%(levelname)s]: %(message)s"
    )
    import nnabla as nn

    from .context import create_context
    from .engine import trial_in_folder

    try:
        scope = nn.context_scope(create_context(*work.context))
    except InfluenceError as error:
        events.put(("error", None, "bad input", str(error)))
        return
    with scope:
        while True:
            index = tasks.get()
            if index is None:
                return
            try:
                result = trial_in_folder(
                    work.model,
                    work.train,
                    work.val,
                    work.arguments,
                    index,
                    work.folder,
                    keep_temp=work.keep_temp,
                    progress=_QueueProgress(events),
                )
            except InfluenceError as error:
                events.put(("error", index, "bad input", str(error)))
                return
            except MemoryError:
                events.put(("error", index, "bad input", OUT_OF_MEMORY))
                return
            except Exception as error:  # reported by the parent as the bug it is
                events.put(("error", index, type(error).__name__, str(error)))
                return
            events.put(("done", index, result))


def run_trials_in_processes(
    model,
    train,
    val,
    arguments: InfluenceArguments,
    folder: Path,
    *,
    workers: int,
    context: Tuple[str, str] = ("cpu", "0"),
    keep_temp: bool = False,
    progress: Progress = SILENT,
) -> InfluenceResult:
    """Every trial of ``arguments`` in ``workers`` processes; scores averaged in trial order."""
    import multiprocessing

    from .engine import average_trials

    spawn = multiprocessing.get_context("spawn")
    tasks, events = spawn.Queue(), spawn.Queue()
    for index in range(arguments.n_trials):
        tasks.put(index)
    for _ in range(workers):
        tasks.put(None)
    work = _Work(model, train, val, arguments, Path(folder), keep_temp, context)
    processes = [
        spawn.Process(target=_work, args=(work, tasks, events), daemon=True) for _ in range(workers)
    ]
    total = arguments.n_trials * units_of_trial(len(train), len(val), arguments)
    display = iter(
        progress.track(range(total), f"{arguments.n_trials} trials on {workers} workers")
    )
    try:
        for process in processes:
            process.start()
        results = _collect(processes, events, arguments.n_trials, display)
    finally:
        _end(processes)
        for _ in display:  # close the display
            pass
    return average_trials(results, train)


def _collect(processes, events, n_trials: int, display) -> List:
    """Every trial's result, in trial order; the first error (or dead worker) ends the run."""
    results: Dict[int, object] = {}
    while len(results) < n_trials:
        checkpoint()
        try:
            event = events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            _check_alive(processes, results, n_trials)
            continue
        if event[0] == "unit":
            next(display, None)
        elif event[0] == "done":
            results[event[1]] = event[2]
        else:
            _raise(*event[1:])
    return [results[index] for index in range(n_trials)]


def _check_alive(processes, results: Dict, n_trials: int) -> None:
    """A worker the system ended (the out-of-memory killer, a kill) ends the run on one line."""
    for process in processes:
        if process.exitcode not in (None, 0):
            raise InfluenceError(
                f"a worker process {_how_it_ended(process.exitcode)} after {len(results)} of "
                f"{n_trials} trials; if the system ran out of memory, use fewer --workers "
                "(each holds its own copy of the data)"
            )
    if all(p.exitcode == 0 for p in processes) and len(results) < n_trials:
        raise RuntimeError("the worker processes ended before every trial was done")


def _how_it_ended(exitcode: int) -> str:
    if exitcode >= 0:
        return f"ended with exit code {exitcode}"
    import signal

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


def _end(processes) -> None:
    """Stop every worker that still runs and wait for it (its files are the parent's to remove)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        if process.pid is not None:
            process.join(timeout=30)
