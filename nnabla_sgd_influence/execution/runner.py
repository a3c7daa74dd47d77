"""How a computation runs, chosen once, and the run of its trials on that choice.

:func:`create_execution` turns :class:`..arguments.ExecutionArguments` into one
:class:`Execution`, each setting resolved and checked once: the context and its device (see
:mod:`.device`; under MPI a rank's device is its local rank unless one is given), the number
of worker processes, the MPI job this process is a rank of, and where the temporary folder is
made. :func:`run_influence` runs every trial of an :class:`..arguments.InfluenceArguments` on
it: over the MPI ranks (:mod:`.mpi`), in worker processes (:mod:`.workers`) or in this
process. The Python API and the plugins both build an :class:`Execution` and call it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..arguments import ExecutionArguments, InfluenceArguments
from ..data.datasets import Batches, Dataset
from ..influence.results import InfluenceResult, images_read
from ..influence.trials import run_trials, warn_about_batches_of_one
from ..nnp.model import NnpModel
from ..nnp.solvers import warn_if_not_modeled
from ..runtime.output_paths import check_temporary_parent, files_read
from ..runtime.progress import SILENT, Progress
from ..runtime.workspace import workspace
from .device import Device, resolve_device
from .mpi import World, run_trials_over_mpi, world
from .workers import default_workers, run_trials_in_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    """Where and how the trials of one computation run."""

    device: Device
    workers: int  # processes the trials run in; 1: this one
    world: Optional[World]  # the MPI job this process is a rank of, or None
    temp_parent: Optional[Path]  # where the run's temporary folder is made; None: the system's
    keep_temp: bool
    progress: Progress

    @property
    def leads(self) -> bool:
        """Whether this process checks the inputs, reports and gets the result: MPI's rank 0,
        or the only process."""
        return self.world is None or self.world.rank == 0


def create_execution(
    arguments: ExecutionArguments,
    n_trials: int,
    *,
    progress: Progress = SILENT,
    default_temp_parent: Optional[Path] = None,
) -> Execution:
    """The :class:`Execution` of ``arguments`` for ``n_trials`` trials; the temporary folder
    goes into ``arguments.temp_dir``, else into ``default_temp_parent``, else the system's.

    A context that cannot be created (``cudnn`` without its package) or an unusable
    ``temp_dir`` is an :class:`~..errors.InfluenceError` now, before any input is read.
    """
    job = world()
    device_id = arguments.device_id
    if device_id is None:
        device_id = "0" if job is None else str(job.local_rank)  # one GPU per rank
    device = resolve_device(arguments.context, str(device_id))
    workers = default_workers(n_trials) if arguments.workers is None else arguments.workers
    return Execution(
        device=device,
        workers=min(workers, n_trials),
        world=job,
        temp_parent=_temp_parent(arguments, default_temp_parent, job),
        keep_temp=arguments.keep_temp,
        progress=progress,
    )


def _temp_parent(
    arguments: ExecutionArguments, default: Optional[Path], job: Optional[World]
) -> Optional[Path]:
    """``temp_dir`` (checked here), else ``default``. An MPI rank other than 0 may run on
    another machine, where the folder need not exist: it then uses the system's."""
    chosen = arguments.temp_dir if arguments.temp_dir is not None else default
    if chosen is None:
        return None
    chosen = Path(chosen)
    if job is not None and job.rank != 0:
        return chosen if chosen.is_dir() else None
    if arguments.temp_dir is not None:
        check_temporary_parent(chosen)
    return chosen


def run_influence(
    execution: Execution,
    model: NnpModel,
    train: Batches,
    val: Batches,
    arguments: InfluenceArguments,
) -> Optional[InfluenceResult]:
    """Every trial of ``arguments`` on ``execution``, in the context of its device and in
    one temporary folder; the scores averaged in trial order (None on MPI ranks other than 0).

    The result knows which files were read (:meth:`.InfluenceResult.inputs`): those that
    ``model``, ``train`` and ``val`` were loaded from, and the ``net.nntxt`` read for the
    context.
    """
    import nnabla as nn

    if execution.leads:
        warn_if_not_modeled(model.solver)
        warn_about_batches_of_one(model, len(train), arguments.batch_size)
    log.info("%s", execution.device.describe())
    temporary = workspace(execution.temp_parent, keep=execution.keep_temp)
    with nn.context_scope(execution.device.context), temporary as folder:
        result = _run_trials(execution, model, train, val, arguments, folder)
    if result is not None:
        _record_inputs(result, model, train, val, execution.device)
    return result


def _run_trials(
    execution: Execution,
    model: NnpModel,
    train: Batches,
    val: Batches,
    arguments: InfluenceArguments,
    folder: Path,
) -> Optional[InfluenceResult]:
    """Over the MPI ranks, in worker processes, or here."""
    options = dict(keep_temp=execution.keep_temp, progress=execution.progress)
    if execution.world is not None:
        return run_trials_over_mpi(model, train, val, arguments, folder, execution.world, **options)
    if execution.workers > 1:
        device = (execution.device.name, execution.device.device_id)
        return run_trials_in_processes(
            model,
            train,
            val,
            arguments,
            folder,
            workers=execution.workers,
            device=device,
            **options,
        )
    return run_trials(model, train, val, arguments, folder, **options)


def _record_inputs(
    result: InfluenceResult, model: NnpModel, train: Batches, val: Batches, device: Device
) -> None:
    """Keep in ``result`` the files its computation read, for its writers' checks."""
    datasets = [data.path if isinstance(data, Dataset) else None for data in (train, val)]
    read = files_read(model.path, *datasets, device.context_file)
    result.files_read = tuple((label, str(path)) for label, path in read)
    result.images_read = images_read(train, "input-train") + images_read(val, "input-val")
