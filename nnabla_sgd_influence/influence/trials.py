"""Trials of SGD-Influence: retrain, take the query gradient, retrace; then average them.

:func:`run_trial` is one trial on fresh copies of the model's parameters; :func:`run_trials`
runs every trial of an :class:`~..arguments.InfluenceArguments` in a working folder and averages
their scores in trial order.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Protocol, Sequence

import numpy as np

from ..arguments import InfluenceArguments
from ..data.datasets import Batches
from ..errors import InfluenceError
from ..nnp.model import NnpModel
from ..runtime.progress import SILENT, Progress
from ..runtime.signals import checkpoint
from ..runtime.workspace import remove_folder, workspace
from .graphs import GraphCache
from .hvp import StepPass, create_pass
from .parameters import ParameterSet
from .query import validation_gradient
from .results import InfluenceResult
from .retrace import retrace
from .training import Step, retrain

log = logging.getLogger(__name__)


class Shard(Protocol):
    """A split of each step's batch over processes (an MPI :class:`..execution.mpi.World`)."""

    def sharded(self, step_pass: StepPass) -> StepPass:
        """``step_pass`` over this process's rows of each batch, its sums over every process."""
        ...

    def sum(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """The sum of ``arrays`` over every process, the same on each."""
        ...


@dataclass
class TrialResult:
    """One trial's scores and what it did."""

    scores: np.ndarray  # influence per training row (negative: removing it lowers the loss)
    seed: int
    steps: List[Step]
    stored_bytes: int  # bytes kept for the retrace: final parameters, or every step's
    hvp_method: str
    validation_loss: float  # at the retrained parameters


def run_trial(
    model: NnpModel,
    train: Batches,
    val: Batches,
    arguments: Optional[InfluenceArguments] = None,
    *,
    trial: int = 0,
    workdir: Optional[Path] = None,
    progress: Progress = SILENT,
    shard: Optional[Shard] = None,
) -> TrialResult:
    """Score every row of ``train`` by its SGD-Influence on the mean loss of ``val``.

    Trial ``trial`` (0-based) shuffles with ``arguments.seed + trial``. Mode ``exact`` stores
    its snapshots in ``workdir`` (a temporary folder when None). ``model`` is left as loaded.
    ``shard`` (an :class:`..execution.mpi.World`) splits each step's batch over MPI ranks.
    """
    arguments = arguments or InfluenceArguments()
    seed = arguments.seed_of(trial)
    params = ParameterSet(model)
    graphs = GraphCache(model, params)
    step_pass = create_pass(graphs, arguments.hvp)
    if shard is not None:
        step_pass = shard.sharded(step_pass)
    with _working_folder(workdir, arguments.mode) as folder:
        run = retrain(
            graphs,
            model.solver,
            train,
            batch_size=arguments.batch_size,
            seed=seed,
            epochs=arguments.epochs,
            mode=arguments.mode,
            workdir=folder,
            progress=progress,
        )
        u, val_loss = validation_gradient(graphs, val, arguments.batch_size, progress)
        scores = retrace(
            params,
            model.solver,
            train,
            run,
            u,
            step_pass,
            retrace_as_sgd=arguments.retrace_as_sgd,
            progress=progress,
        )
    if shard is not None:
        (scores,) = shard.sum([scores])  # each rank holds its rows' share
    return TrialResult(
        scores=scores,
        seed=seed,
        steps=run.steps,
        stored_bytes=run.stored_bytes,
        hvp_method=step_pass.name,
        validation_loss=val_loss,
    )


def warn_about_batches_of_one(model: NnpModel, n_rows: int, batch_size: int) -> None:
    """BatchNormalization on a batch of one row normalizes every activation to 0: that step's
    rows get a gradient of rounding noise before the layer (NNC trains the same way)."""
    if (batch_size == 1 or n_rows % batch_size == 1) and model.layers_of_type(
        "BatchNormalization", "FusedBatchNormalization"
    ):
        log.warning(
            "a step trains on one row while the model has BatchNormalization: batch statistics "
            "of one row carry no signal, so that row's score is noise before the layer "
            "(choose a batch size that does not leave one row, e.g. %d)",
            batch_size + 1 if batch_size > 1 else 2,
        )


@contextmanager
def _working_folder(workdir: Optional[Path], mode: str) -> Iterator[Optional[Path]]:
    if workdir is not None or mode != "exact":
        yield workdir
    else:
        with workspace() as folder:
            yield folder


def run_trials(
    model: NnpModel,
    train: Batches,
    val: Batches,
    arguments: InfluenceArguments,
    folder: Path,
    *,
    keep_temp: bool = False,
    progress: Progress = SILENT,
) -> InfluenceResult:
    """Every trial (seeds seed, seed+1, ...), each in ``folder/trial_<i>``; scores averaged."""
    trials = Trials(model, train, val, arguments, Path(folder), keep_temp, progress)
    return average_trials([trials.run(index) for index in range(arguments.n_trials)], train)


@dataclass(frozen=True)
class Trials:
    """The trials of one computation, each run in its own subfolder of ``folder``, which is
    removed after it unless ``keep_temp``; ``shard`` splits each step's batch over MPI ranks."""

    model: NnpModel
    train: Batches
    val: Batches
    arguments: InfluenceArguments
    folder: Path
    keep_temp: bool = False
    progress: Progress = SILENT
    shard: Optional[Shard] = None

    def run(self, index: int) -> TrialResult:
        """Trial ``index`` (0-based) in ``folder/trial_<index + 1>``."""
        workdir = Path(self.folder) / f"trial_{index + 1}"
        workdir.mkdir()
        result = run_trial(
            self.model,
            self.train,
            self.val,
            self.arguments,
            trial=index,
            workdir=workdir,
            progress=self.progress.for_trial(index, self.arguments.n_trials),
            shard=self.shard,
        )
        if not self.keep_temp:
            remove_folder(workdir)  # mode "exact" may have stored much there
        checkpoint()
        return result


def average_trials(trials: List[TrialResult], train: Optional[Batches] = None) -> InfluenceResult:
    """Mean scores of the trials, added in trial order (the same bits however they ran)."""
    per_trial = np.array([t.scores for t in trials], dtype=np.float64)
    total = np.zeros(per_trial.shape[1], dtype=np.float64)
    for scores in per_trial:
        total += scores
    scores = total / len(per_trial)
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:  # each trial checks its training, u and every step: a sum that overflowed
        raise InfluenceError(f"influence is not finite for {bad} of {len(scores)} rows")
    first = trials[0]
    return InfluenceResult(
        scores=scores,
        per_trial=per_trial,
        seeds=[t.seed for t in trials],
        validation_losses=np.array([t.validation_loss for t in trials]),
        hvp_method=first.hvp_method,
        steps=first.steps,
        stored_bytes=first.stored_bytes,
        dataset=train,
    )
