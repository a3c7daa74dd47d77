"""Retrain the model with its own solver and record what every step did.

Retraining starts from the ``.nnp``'s parameters and solver state and continues its learning-rate
schedule. Each step's rows, learning rate and solver step count are recorded. Mode ``last``
keeps only the final parameters (and the final moments of adaptive solvers); mode ``exact``
also writes theta_t and the solver's moments after every step to disk, one file per step, so
that the retrace can stream them back in reverse without holding them in memory.

With ``row_weights`` a row's loss counts ``w_j`` times in its batch's mean (the denominator stays
|S|): leave-one-out retraining (:mod:`..evaluation.ground_truth`) is this same loop with one
weight at 0.

A training loss that is not finite, or parameters that are not finite after the last step, stop
the run with the step where it happened: the retraining diverged, and no score would mean
anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..data.datasets import Batches
from ..errors import InfluenceError, excerpt
from ..nnp.solvers import (
    SolverSpec,
    SolverState,
    create_solver,
    learning_rate_schedule,
    retrace_state_names,
    saved_state,
    solver_arrays,
    solver_step_count,
)
from ..runtime.progress import SILENT, Progress
from ..runtime.signals import checkpoints
from ..runtime.staging import save_array
from .graphs import GraphCache

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One recorded solver step."""

    epoch: int
    step: int  # index within the epoch
    iteration: int  # iteration of the learning-rate schedule
    learning_rate: float
    rows: np.ndarray  # 0-based rows of input-train in this batch
    solver_step: int = 0  # solver's own step count after this update (bias corrections)


@dataclass
class TrainingRun:
    """What the retrace needs from retraining."""

    steps: List[Step]
    final_theta: List[np.ndarray]  # trainable parameters after the last step
    final_state: SolverState  # solver arrays the retrace reads, by state name
    mode: str
    snapshot_dir: Optional[Path] = None
    stored_bytes: int = 0
    shapes: List[Tuple[int, ...]] = field(default_factory=list)
    # The solver's whole state after the last step, as SolverSpec.state holds it.
    solver_state: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict, repr=False)


def batch_order(
    n_rows: int, batch_size: int, seed: int, epochs: int
) -> List[Tuple[int, np.ndarray]]:
    """(epoch, rows) of every step: rows shuffled with ``seed``, the last batch may be short."""
    rng = np.random.RandomState(seed)
    order = []
    for epoch in range(epochs):
        permutation = rng.permutation(n_rows)
        for start in range(0, n_rows, batch_size):
            order.append((epoch, permutation[start : start + batch_size]))
    return order


def retrain(
    graphs: GraphCache,
    spec: SolverSpec,
    train: Batches,
    *,
    batch_size: int,
    seed: int,
    epochs: int = 1,
    mode: str = "last",
    workdir: Optional[Path] = None,
    progress: Progress = SILENT,
    row_weights: Optional[np.ndarray] = None,
) -> TrainingRun:
    """Run ``epochs`` epochs of ``spec``'s solver on ``train``, updating the parameters in place."""
    import nnabla as nn

    if mode == "exact" and workdir is None:
        raise ValueError("mode 'exact' needs a working folder for the per-step snapshots")
    nn.seed(seed)
    params = graphs.params
    names = params.trainable
    solver = create_solver(spec, dict(zip(names, params.theta)))
    schedule = learning_rate_schedule(spec)
    state_names = retrace_state_names(spec)
    snapshots = _SnapshotWriter(Path(workdir) / f"snapshots-{seed}") if mode == "exact" else None

    steps: List[Step] = []
    plan = batch_order(len(train), batch_size, seed, epochs)
    for index, (epoch, rows) in enumerate(checkpoints(progress.track(plan, "retraining"))):
        theta_before = params.trainable_arrays() if snapshots else None
        iteration = spec.start_iteration + index
        learning_rate = schedule(iteration)
        first = not steps or steps[-1].epoch != epoch
        step_in_epoch = 0 if first else steps[-1].step + 1
        loss = _update(solver, graphs, train, rows, row_weights, spec.weight_decay, learning_rate)
        if not np.isfinite(loss):
            raise InfluenceError(
                f"retraining diverged: the training loss is {loss} at epoch {epoch}, step "
                f"{step_in_epoch} (iteration {iteration}, rows {_rows_excerpt(rows)}); check "
                "the model's solver and learning rate"
            )
        solver_step = solver_step_count(solver, names)
        steps.append(Step(epoch, step_in_epoch, iteration, learning_rate, rows, solver_step))
        if snapshots is not None:
            snapshots.write(theta_before, solver_arrays(solver, names, state_names))

    final_state = solver_arrays(solver, names, state_names)
    final_theta = params.trainable_arrays()
    _check_finite_parameters(names, final_theta)
    kept = sum(a.nbytes for a in final_theta)
    kept += sum(a.nbytes for arrays in final_state.values() for a in arrays)
    return TrainingRun(
        steps=steps,
        final_theta=final_theta,
        final_state=final_state,
        mode=mode,
        snapshot_dir=snapshots.folder if snapshots else None,
        stored_bytes=snapshots.bytes_written if snapshots else kept,
        shapes=params.shapes,
        solver_state=saved_state(solver),
    )


def _update(
    solver,
    graphs: GraphCache,
    train: Batches,
    rows: np.ndarray,
    row_weights: Optional[np.ndarray],
    weight_decay: float,
    learning_rate: float,
) -> float:
    """One solver step on the batch ``rows``: forward, backward, weight decay, update.
    Returns the batch's training loss."""
    graph = graphs.loss(len(rows), training=True)
    graph.feed(train.batch(rows))
    if row_weights is None:
        loss = graph.mean_loss
    else:
        graph.weights.d = np.asarray(row_weights, dtype=np.float32)[rows]
        loss = graph.weighted_mean_loss
    loss.forward(clear_no_need_grad=True)
    value = float(loss.d)
    solver.zero_grad()
    loss.backward(clear_buffer=True)
    if weight_decay > 0:
        solver.weight_decay(weight_decay)
    solver.set_learning_rate(learning_rate)
    solver.update()
    return value


def _check_finite_parameters(names: List[str], values: List[np.ndarray]) -> None:
    """Stop when a retrained parameter is not finite (an update overflowed)."""
    for name, value in zip(names, values):
        if not np.isfinite(value).all():
            raise InfluenceError(
                f"retraining diverged: parameter '{excerpt(name)}' is not finite after the last "
                "step; check the model's solver and learning rate"
            )


def _rows_excerpt(rows: np.ndarray, shown: int = 5) -> str:
    """The first rows of a step, 0-based as in the step log."""
    listed = " ".join(str(int(r)) for r in rows[:shown])
    return listed + (f" ... ({len(rows)} rows)" if len(rows) > shown else "")


class _SnapshotWriter:
    """Writes one ``.npy`` per step: theta_t, then each solver-state array, flattened."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.bytes_written = 0

    def write(self, theta: List[np.ndarray], state: Dict[str, List[np.ndarray]]) -> None:
        parts = [a.ravel() for a in theta]
        parts += [a.ravel() for key in sorted(state) for a in state[key]]
        path = self.folder / f"{self.count:07d}.npy"
        self.bytes_written += save_array(path, np.concatenate(parts).astype(np.float32))
        self.count += 1


def snapshots_in_reverse(run: TrainingRun) -> Iterator[Tuple[List[np.ndarray], SolverState]]:
    """theta_t and the solver state of every step, last step first (mode ``exact``)."""
    sizes = [int(np.prod(s)) for s in run.shapes]
    for index in range(len(run.steps) - 1, -1, -1):
        flat = np.load(run.snapshot_dir / f"{index:07d}.npy")
        theta, offset = _split(flat, 0, sizes, run.shapes)
        state = {}
        for key in sorted(run.final_state):
            state[key], offset = _split(flat, offset, sizes, run.shapes)
        yield theta, state


def _split(flat: np.ndarray, offset: int, sizes: List[int], shapes) -> Tuple[List[np.ndarray], int]:
    arrays = []
    for size, shape in zip(sizes, shapes):
        arrays.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return arrays, offset
