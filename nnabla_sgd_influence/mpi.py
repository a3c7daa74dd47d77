"""Trials, or each step's batch, split over MPI ranks: ``mpirun -n K python plugins/<script>``.

With at least as many trials as ranks (or a model whose BatchNormalization couples the rows of
a batch), **the trials are split**: rank r runs trials r, r + K, ...; rank 0 gathers them and
averages in trial order, so the CSV is byte for byte a single process's. With fewer trials than
ranks (the tabular plugin's default is one trial), **each step's batch is split**: every rank
retrains (the same run, no communication) and takes its part of every step's rows in the
retrace; the batch gradient and the Hessian-vector sum are summed over the ranks, each row's
``<v, g_j>`` stays on its rank and the scores are summed at the end. That equals one process
up to float32 rounding (the sums run in another order).

Rank 0 alone checks the inputs; on bad input every rank stops and rank 0 prints the one line.
mpi4py is an optional extra: without it, or outside ``mpirun``, nothing changes (a run under
``mpirun`` without mpi4py runs on rank 0 alone and says so). Sums are reduced to rank 0 and
broadcast back, so that every rank carries exactly the same adjoint. NNabla's own
communicators need its CUDA extension and NCCL and reduce device arrays; this pass hands numpy
arrays across, so mpi4py serves both CPU and GPU runs (one rank per GPU: the device of a rank
is its local rank unless ``--device-id`` is given).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .environment import launched

log = logging.getLogger(__name__)

BATCH_COUPLING_LAYERS = ("BatchNormalization", "FusedBatchNormalization")


@dataclass
class World:
    """This process's place among the ranks of an MPI job."""

    comm: object  # mpi4py.MPI.Comm
    rank: int
    size: int
    local_rank: int

    def sum(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """The sum over ranks of ``arrays``, identical on every rank (reduce, then broadcast)."""
        from mpi4py import MPI

        shapes = [np.shape(a) for a in arrays]
        flat = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays])
        total = np.empty_like(flat)
        self.comm.Reduce(flat, total if self.rank == 0 else None, op=MPI.SUM, root=0)
        self.comm.Bcast(total if self.rank == 0 else flat, root=0)
        summed = total if self.rank == 0 else flat
        out, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(summed[offset : offset + size].reshape(shape))
            offset += size
        return out

    def sharded(self, step_pass) -> ShardedPass:
        """``step_pass`` over this rank's share of each batch, its sums over all ranks."""
        return ShardedPass(step_pass, self)


def world() -> Optional[World]:
    """The MPI job this process is a rank of, or None (no launcher, one rank, or no mpi4py)."""
    size, rank, local = launched()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return World(comm, comm.Get_rank(), comm.Get_size(), local)


def splits_batches(model, n_trials: int, size: int) -> bool:
    """Whether ranks split each step's batch (fewer trials than ranks, no batch coupling)."""
    return n_trials < size and not model.layers_of_type(*BATCH_COUPLING_LAYERS)


class ShardedPass:
    """A step pass over this rank's share of each batch, summed over the ranks.

    ``__call__``/``prepare``/``finish`` keep the single-process signatures: ``<v, g_j>`` comes
    back for the whole batch, zero where a row is another rank's, and the sums (batch gradient,
    ``sum_i H_i v``) are the whole batch's.
    """

    def __init__(self, inner, world: World) -> None:
        self.inner = inner
        self.world = world
        self.name = inner.name
        self._rows = np.zeros(0, dtype=np.intp)
        self._size = 0

    def _share(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self._size = len(next(iter(batch.values())))
        self._rows = np.array_split(np.arange(self._size), self.world.size)[self.world.rank]
        return {name: values[self._rows] for name, values in batch.items()}

    def __call__(self, batch, v):
        share = self._share(batch)
        if len(self._rows):
            return self._whole(*self.inner(share, v))
        return self._whole(np.zeros(0), [np.zeros(np.shape(a)) for a in v])

    def prepare(self, batch) -> List[np.ndarray]:
        share = self._share(batch)
        if len(self._rows):
            gradient = self.inner.prepare(share)
        else:
            gradient = [np.zeros(shape) for shape in self.inner.graphs.params.shapes]
        return self.world.sum(gradient)

    def finish(self, v):
        if len(self._rows):
            return self._whole(*self.inner.finish(v))
        return self._whole(np.zeros(0), [np.zeros(np.shape(a)) for a in v])

    def _whole(self, local_dots: np.ndarray, hv: List[np.ndarray]):
        dots = np.zeros(self._size)
        dots[self._rows] = local_dots
        return dots, self.world.sum(hv)


def run_trials_over_mpi(
    model,
    train,
    val,
    arguments,
    folder: Path,
    world: World,
    *,
    keep_temp: bool = False,
    progress=None,
):
    """Every trial over the ranks (see the module docstring); the averaged result on rank 0,
    None on the others."""
    from .engine import average_trials, trial_in_folder
    from .progress import SILENT

    progress = SILENT if progress is None or world.rank != 0 else progress
    if splits_batches(model, arguments.n_trials, world.size):
        trials = [
            trial_in_folder(model, train, val, arguments, i, folder, keep_temp, progress, world)
            for i in range(arguments.n_trials)
        ]
        return average_trials(trials, train) if world.rank == 0 else None
    mine = range(world.rank, arguments.n_trials, world.size)
    if not mine:
        log.info("rank %d has no trial to run (%d trials)", world.rank, arguments.n_trials)
    outcome: Tuple[str, object]
    try:
        done = [
            trial_in_folder(model, train, val, arguments, i, folder, keep_temp, progress)
            for i in mine
        ]
        outcome = ("done", list(zip(mine, done)))
    except Exception as error:  # sent to rank 0, which reports it for every rank
        outcome = ("error", error)
    gathered = world.comm.gather(outcome, root=0)
    if world.rank != 0:
        return None
    for kind, value in gathered:
        if kind == "error":
            raise value
    trials = dict(pair for _, pairs in gathered for pair in pairs)
    return average_trials([trials[i] for i in range(arguments.n_trials)], train)
