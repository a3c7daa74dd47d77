"""Trials, or each step's batch, split over MPI ranks: ``mpirun -n K python plugins/<script>``.

With at least as many trials as ranks (or a model whose BatchNormalization couples the rows of
a batch), **the trials are split**: rank r runs trials r, r + K, ...; rank 0 collects them and
averages in trial order, so the CSV is byte for byte a single process's. With fewer trials than
ranks (the tabular plugin's default is one trial), **each step's batch is split**: every rank
retrains (the same run, no communication) and takes its part of every step's rows in the
retrace; the batch gradient and the Hessian-vector sum are summed over the ranks, each row's
``<v, g_j>`` stays on its rank and the scores are summed at the end. That equals one process
up to float32 rounding (the sums run in another order).

Rank 0 alone checks the inputs and hands them to the others (:func:`loaded_on_rank_0`).
:func:`launched` tells from the environment whether a launcher started this process, without
importing anything (the plugins ask before numpy is loaded). mpi4py is an optional extra:
without it, or outside ``mpirun``, nothing changes (a run under ``mpirun`` without mpi4py runs
on rank 0 alone and says so). Sums are reduced to rank 0 and broadcast back, so that every rank
carries exactly the same adjoint. NNabla's own communicators need its CUDA extension and NCCL
and reduce device arrays; this pass hands numpy arrays across, so mpi4py serves both CPU and
GPU runs (one rank per GPU: the device of a rank is its local rank unless ``--device-id`` is
given).

**Stopping together.** An error, a signal or a death on any rank ends every rank, each after
removing its own temporary folder, with rank 0 printing the line of the rank where the run
stopped. Open MPI's launcher gives a rank only a quarter of a second between its SIGTERM and
its SIGKILL once it ends a job (after a rank exits with an error, dies or calls
``MPI_Abort``), too little for a clean-up, so the ranks never leave that to it:

- no rank waits in a blocking MPI call: every transfer is non-blocking and waited for in a
  loop that acts on signals and on the other ranks' stops (:meth:`World.wait`);
- a rank that stops tells every other one (a small message: its closing line and exit code);
  a watcher thread on every rank reads these messages and notices when a rank on the same
  machine is gone without one (killed by the system); either makes the main thread stop at
  its next checkpoint, as a signal would (:func:`.signals.request_stop`);
- every rank joins the job before anything can fail, and leaves through ``MPI_Finalize``,
  which waits for every rank: no rank exits before rank 0 has printed the line.
"""

from __future__ import annotations

import array
import atexit
import dataclasses
import logging
import os
import pickle
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

from ..errors import RunStopped, chain, closing_line, one_line
from ..runtime import signals

if TYPE_CHECKING:  # numpy and nnabla are not loaded before a run needs them
    from ..arguments import InfluenceArguments
    from ..data.datasets import Batch, Batches
    from ..influence.hvp import PassResult, StepPass
    from ..influence.results import InfluenceResult
    from ..nnp.model import NnpModel
    from ..runtime.progress import Progress

log = logging.getLogger(__name__)

BATCH_COUPLING_LAYERS = ("BatchNormalization", "FusedBatchNormalization")
WATCH_SECONDS = 0.05  # how often the watcher reads the other ranks' messages and looks for deaths
NOTICE_SECONDS = 10.0  # how long a stopping rank waits for its stop message to leave
PAUSES = (1e-5, 5e-3)  # a wait polls its transfer with pauses doubling from the first to the last
# Tags of the messages between ranks (on COMM_WORLD; collectives never match a tag)
PEER_TAG, FOLDER_TAG, STOP_TAG, RESULT_TAG = 7101, 7102, 7103, 7104
_world: Optional[World] = None
Loaded = TypeVar("Loaded")
# What the common launchers put in each rank's environment: (size, rank, local rank).
_LAUNCHER_VARIABLES = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),  # MPICH, Intel MPI, MS-MPI
    ("PMIX_SIZE", "PMIX_RANK", "PMIX_LOCAL_RANK"),
)


def launched() -> Tuple[int, int, int]:
    """(size, rank, local rank) that an MPI launcher gave this process; (1, 0, 0) if none."""
    for size, rank, local in _LAUNCHER_VARIABLES:
        if size in os.environ:
            try:
                return (
                    int(os.environ[size]),
                    int(os.environ.get(rank, "0")),
                    int(os.environ.get(local, os.environ.get(rank, "0"))),
                )
            except ValueError:
                continue
    return 1, 0, 0


@dataclass(frozen=True)
class Stop:
    """Where the run stopped: a rank, the line it closes with and its exit code."""

    rank: int
    code: int
    line: str

    def attributed(self) -> str:
        """The line as rank 0 prints it: the rank named (``error: MPI rank 1: ...``)."""
        head, separator, rest = self.line.partition(": ")
        if separator:
            return one_line(f"{head}: MPI rank {self.rank}: {rest}")
        return one_line(f"{self.line} (MPI rank {self.rank})")

    def error(self) -> RunStopped:
        return RunStopped(self.code, self.attributed())


class World:
    """This process's place among the ranks of an MPI job, and how the ranks stop together.

    Made once per process by :func:`world`; its watcher thread runs until :meth:`close`
    (called at exit, before ``MPI_Finalize``).
    """

    def __init__(self, comm, local_rank: int) -> None:
        self.comm = comm  # mpi4py.MPI.Comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self.local_rank = local_rank
        self.stop: Optional[Stop] = None  # the first stop this rank heard of, or its own
        self._host = host_identity()
        self._pids: Dict[int, int] = {}  # rank -> process id, for the ranks on this machine
        self._folders: Dict[int, str] = {}  # rank -> temporary folder, ranks on this machine
        self._dead: Set[int] = set()  # ranks seen gone: nothing is sent to them
        self._sending: List[object] = []  # requests whose buffers must live until they leave
        self._told = False  # this rank sent its stop to the others
        self._heard = False  # the stop came in another rank's message
        self._rank_0_checked = False  # share() has begun: rank 0's checks passed
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._send_to_others(PEER_TAG, (self._host, os.getpid()))
        self._watcher = threading.Thread(target=self._watch, name="mpi-watcher", daemon=True)
        self._watcher.start()

    # -- collectives and transfers, each waited for without blocking -------------------

    def sum(self, arrays: Sequence) -> List:
        """The sum over ranks of ``arrays``, identical on every rank (reduce, then broadcast)."""
        import numpy as np
        from mpi4py import MPI

        shapes = [np.shape(a) for a in arrays]
        flat = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays])
        total = np.empty_like(flat)
        self.wait(self.comm.Ireduce(flat, total if self.rank == 0 else None, op=MPI.SUM, root=0))
        summed = total if self.rank == 0 else flat
        self.wait(self.comm.Ibcast(summed, root=0))
        out, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(summed[offset : offset + size].reshape(shape))
            offset += size
        return out

    def share(self, value: object = None) -> object:
        """Rank 0's ``value`` on every rank (pickled once, broadcast without blocking).

        Its size goes first: that it arrives tells a rank that rank 0 passed its checks.
        """
        from mpi4py import MPI

        data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL) if self.rank == 0 else b""
        size = array.array("q", [len(data)])
        self.wait(self.comm.Ibcast(size, root=0))
        self._rank_0_checked = True
        buffer = data if self.rank == 0 else bytearray(size[0])
        self.wait(self.comm.Ibcast([buffer, MPI.BYTE], root=0))
        return value if self.rank == 0 else pickle.loads(buffer)

    def send(self, value: object, destination: int, tag: int) -> None:
        self.wait(self.comm.isend(value, dest=destination, tag=tag))

    def receive(self, source: int, tag: int) -> object:
        pauses = _pauses()
        while not self.comm.iprobe(source=source, tag=tag):
            self.check()
            time.sleep(next(pauses))
        return self.comm.recv(source=source, tag=tag)

    def wait(self, request) -> None:
        """Wait for ``request``; meanwhile a signal or another rank's stop raises (a blocking
        MPI call would never return once another rank stopped)."""
        pauses = _pauses()
        while not request.Test():
            self.check()
            time.sleep(next(pauses))

    def check(self) -> None:
        """Raise :class:`RunStopped` if another rank stopped the run, :class:`.signals.
        Interrupted` if a signal is pending: a checkpoint for the waits."""
        stop = self.stop
        if stop is not None and stop.rank != self.rank:
            raise stop.error()
        signals.checkpoint()

    def sharded(self, step_pass: StepPass) -> ShardedPass:
        """``step_pass`` over this rank's share of each batch, its sums over all ranks."""
        return ShardedPass(step_pass, self)

    # -- stopping together ----------------------------------------------------------------

    def announce_folder(self, folder: Path) -> None:
        """Tell the other ranks this rank's temporary folder: whoever outlives it on the same
        machine removes it if it dies."""
        self._send_to_others(FOLDER_TAG, (self._host, str(folder)))

    def settle(self, error: BaseException) -> Tuple[str, int]:
        """The run's closing line and exit code once ``error`` ended it on this rank, the
        same on every rank (see :meth:`stopping`); ends the watcher.

        The job's exit code is rank 0's, which reports the stop: the other ranks exit with
        0 (while rank 0 lives), as Open MPI's launcher prints a notice of several lines
        whenever a rank exits with an error while another one still runs.

        Before rank 0 handed the inputs over, a rank other than 0 that fails (not by a
        signal) first waits for rank 0's verdict: an argument or a file that is wrong for
        one rank is wrong for rank 0 too, and rank 0 says so in its own words.
        """
        stop = self._rank_0_stop(error) or self.stopping(error)
        self.close()
        line = stop.line if stop.rank == self.rank else stop.attributed()
        return line, stop.code if self.rank == 0 or 0 in self._dead else 0

    def _rank_0_stop(self, error: BaseException) -> Optional[Stop]:
        """Rank 0's stop, if this rank failed before the inputs came and rank 0 stopped."""
        if self.rank == 0 or self._rank_0_checked or stopped_by_request(error):
            return None
        if any(isinstance(link, KeyboardInterrupt) for link in chain(error)):
            return None  # this rank's signal: it stops the run now
        size = array.array("q", [0])  # what share() sends first
        try:
            self.wait(self.comm.Ibcast(size, root=0))
        except RunStopped:
            return self.stop
        except (Exception, KeyboardInterrupt):  # a signal meanwhile, or MPI failing
            log.debug("no verdict from rank 0", exc_info=True)
        return None  # rank 0 passed its checks: this rank's failure is the run's

    def stopping(self, error: BaseException) -> Stop:
        """Where the run stopped, now that ``error`` ends it on this rank: another rank, if
        this rank stops because of it; else here. Unless the stop came in another rank's
        message (which went to every rank), every other rank is told, once."""
        with self._lock:
            if self.stop is None or not stopped_by_request(error):
                line, code = closing_line(error)
                self.stop = Stop(self.rank, code, line)
                self._heard = False
            stop = self.stop
            tell = not (self._told or self._heard)
            self._told = True
        if tell:
            self.tell_others(stop)
        return stop

    def tell_others(self, stop: Stop) -> None:
        """Send ``stop`` to every other rank and wait (a little) for the messages to leave."""
        try:
            requests = self._send_to_others(STOP_TAG, (stop.rank, stop.code, stop.line))
            deadline = time.monotonic() + NOTICE_SECONDS
            while not all([r.Test() for r in requests]) and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception:  # MPI failing: the launcher ends the other ranks instead
            log.debug("could not tell the other ranks", exc_info=True)

    def close(self) -> None:
        """End the watcher (before ``MPI_Finalize``, which it must not overlap)."""
        self._closed.set()
        if self._watcher.is_alive() and threading.current_thread() is not self._watcher:
            self._watcher.join(timeout=10)

    def _send_to_others(self, tag: int, message: object) -> List[object]:
        requests = [
            self.comm.isend(message, dest=rank, tag=tag)
            for rank in range(self.size)
            if rank != self.rank and rank not in self._dead
        ]
        self._sending = [r for r in self._sending if not r.Test()] + requests
        return requests

    def _watch(self) -> None:
        """Read the other ranks' messages and look for dead ranks until closed."""
        try:
            while not self._closed.wait(WATCH_SECONDS):
                self._read_messages()
                self._look_for_dead_ranks()
        except Exception:  # the MPI library is ending: nothing left to watch
            log.debug("the MPI watcher stopped", exc_info=True)

    def _read_messages(self) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        for tag in (PEER_TAG, FOLDER_TAG, STOP_TAG):
            while not self._closed.is_set() and self.comm.iprobe(
                source=MPI.ANY_SOURCE, tag=tag, status=status
            ):
                source = status.Get_source()
                message = self.comm.recv(source=source, tag=tag)
                if tag == STOP_TAG:
                    self._stopped(Stop(*message), heard=True)
                elif message[0] == self._host:
                    (self._pids if tag == PEER_TAG else self._folders)[source] = message[1]

    def _look_for_dead_ranks(self) -> None:
        for rank, pid in list(self._pids.items()):
            if process_exists(pid):
                continue
            del self._pids[rank]
            self._dead.add(rank)
            folder = self._folders.pop(rank, None)
            if folder is not None:  # it cannot remove it any more
                shutil.rmtree(folder, ignore_errors=True)
            self._stopped(
                Stop(
                    rank,
                    1,
                    f"error: the process (pid {pid}) ended without a word: killed by the system "
                    "(out of memory?) or by hand; if memory ran out, run fewer ranks per machine",
                )
            )

    def _stopped(self, stop: Stop, heard: bool = False) -> None:
        """Record the run's stop elsewhere (the first only) and stop the main thread at its
        next checkpoint."""
        with self._lock:
            if self.stop is not None:
                return
            self.stop, self._heard = stop, heard
        signals.request_stop()


def world() -> Optional[World]:
    """The MPI job this process is a rank of, joined on the first call; None without a
    launcher, with one rank, or without mpi4py."""
    global _world
    if _world is not None:
        return _world
    size, rank, local = launched()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    _world = World(MPI.COMM_WORLD, local)
    atexit.register(_world.close)  # runs before mpi4py's MPI_Finalize, registered earlier
    return _world


def loaded_on_rank_0(world: Optional[World], load: Callable[[], Loaded]) -> Loaded:
    """What ``load()`` returns (the inputs, checked), computed by rank 0 alone and handed to
    every other rank, which waits for it; without MPI, ``load()``.

    If rank 0 stops instead, the others hear it while they wait (see :meth:`World.settle`).
    """
    if world is None:
        return load()
    if world.rank == 0:
        return world.share(load())
    return world.share()


def host_identity() -> str:
    """This machine (and process-id namespace): a rank's process id means something only
    to ranks with the same identity."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no permission to ask: it is there
        return True
    return True


def stopped_by_request(error: BaseException) -> bool:
    """Whether ``error`` is this rank stopping because another rank stopped the run."""
    return any(
        isinstance(link, RunStopped)
        or (isinstance(link, signals.Interrupted) and link.signum == signals.STOP_REQUEST)
        for link in chain(error)
    )


def _pauses():
    """Pauses between two polls of a transfer: short while it may finish any moment, then
    up to a few milliseconds, so that a waiting rank leaves the cores to the others."""
    pause, longest = PAUSES
    while True:
        yield pause
        pause = min(pause * 2, longest)


def splits_batches(model, n_trials: int, size: int) -> bool:
    """Whether ranks split each step's batch (fewer trials than ranks, no batch coupling)."""
    return n_trials < size and not model.layers_of_type(*BATCH_COUPLING_LAYERS)


class ShardedPass:
    """A :class:`..influence.hvp.StepPass` over this rank's share of each batch, summed over
    the ranks.

    ``__call__``/``prepare``/``finish`` keep the single-process signatures: ``<v, g_j>`` comes
    back for the whole batch, zero where a row is another rank's, and the sums (batch gradient,
    ``sum_i H_i v``) are the whole batch's.
    """

    def __init__(self, inner: StepPass, world: World) -> None:
        import numpy as np

        self.inner = inner
        self.world = world
        self.name = inner.name
        self._rows = np.zeros(0, dtype=np.intp)
        self._size = 0

    @property
    def parameter_shapes(self) -> List[Tuple[int, ...]]:
        return self.inner.parameter_shapes

    def _share(self, batch: Batch) -> Batch:
        import numpy as np

        self._size = len(next(iter(batch.values())))
        self._rows = np.array_split(np.arange(self._size), self.world.size)[self.world.rank]
        return {name: values[self._rows] for name, values in batch.items()}

    def __call__(self, batch: Batch, v: Sequence) -> PassResult:
        import numpy as np

        share = self._share(batch)
        if len(self._rows):
            return self._whole(*self.inner(share, v))
        return self._whole(np.zeros(0), [np.zeros(np.shape(a)) for a in v])

    def prepare(self, batch: Batch) -> List:
        import numpy as np

        share = self._share(batch)
        if len(self._rows):
            gradient = self.inner.prepare(share)
        else:
            gradient = [np.zeros(shape) for shape in self.inner.parameter_shapes]
        return self.world.sum(gradient)

    def finish(self, v: Sequence) -> PassResult:
        import numpy as np

        if len(self._rows):
            return self._whole(*self.inner.finish(v))
        return self._whole(np.zeros(0), [np.zeros(np.shape(a)) for a in v])

    def first_non_finite_layer(self, batch: Batch, v: Sequence) -> str:
        """The inner pass's search, on the whole batch (it only runs once a step failed)."""
        return self.inner.first_non_finite_layer(batch, v)

    def _whole(self, local_dots, hv: List) -> PassResult:
        import numpy as np

        dots = np.zeros(self._size)
        dots[self._rows] = local_dots
        return dots, self.world.sum(hv)


def run_trials_over_mpi(
    model: NnpModel,
    train: Batches,
    val: Batches,
    arguments: InfluenceArguments,
    folder: Path,
    world: World,
    *,
    keep_temp: bool = False,
    progress: Optional[Progress] = None,
) -> Optional[InfluenceResult]:
    """Every trial over the ranks (see the module docstring); the averaged result on rank 0,
    None on the others.

    A rank that fails tells the others (rank 0 raises :class:`RunStopped` with its line); a
    rank stopped by another raises :class:`RunStopped` too.
    """
    world.announce_folder(folder)
    try:
        return _run_trials(model, train, val, arguments, folder, world, keep_temp, progress)
    except BaseException as error:
        stop = world.stopping(error)
        if stop.rank != world.rank and not isinstance(error, RunStopped):
            raise stop.error() from None
        raise


def _run_trials(model, train, val, arguments, folder, world, keep_temp, progress):
    from ..influence.trials import Trials, average_trials
    from ..runtime.progress import SILENT

    progress = SILENT if progress is None or world.rank != 0 else progress
    trials = Trials(model, train, val, arguments, folder, keep_temp, progress)
    if splits_batches(model, arguments.n_trials, world.size):
        shared = dataclasses.replace(trials, shard=world)
        done = [shared.run(index) for index in range(arguments.n_trials)]
        return average_trials(done, train) if world.rank == 0 else None
    mine = range(world.rank, arguments.n_trials, world.size)
    if not mine:
        log.info("rank %d has no trial to run (%d trials)", world.rank, arguments.n_trials)
    results = {index: trials.run(index) for index in mine}
    if world.rank != 0:
        world.send(results, 0, RESULT_TAG)
        return None
    for rank in range(1, world.size):
        results.update(world.receive(rank, RESULT_TAG))
    return average_trials([results[i] for i in range(arguments.n_trials)], train)
