"""Stage 3: retrain the model with its own solver and record what every step did.

Retraining starts from the ``.nnp``'s parameters and solver state and continues its learning-rate
schedule. Each step's rows, learning rate and solver step count are recorded. Mode ``last``
keeps only the final parameters (and the final moments of adaptive solvers); mode ``exact``
also writes theta_t and the solver's moments after every step to disk, one file per step, so
that the retrace can stream them back in reverse without holding them in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .datasets import Dataset
from .errors import InfluenceError
from .model import NnpModel, build_graph
from .solvers import create_solver, learning_rate_schedule, retrace_state_names

log = logging.getLogger(__name__)

MODES = ("last", "exact")


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
    final_state: Dict[str, List[np.ndarray]]  # solver arrays the retrace reads, by state name
    mode: str
    snapshot_dir: Optional[Path] = None
    stored_bytes: int = 0
    shapes: List[Tuple[int, ...]] = field(default_factory=list)


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
    model: NnpModel,
    params: Dict[str, object],
    train: Dataset,
    *,
    batch_size: int,
    seed: int,
    epochs: int = 1,
    mode: str = "last",
    workdir: Optional[Path] = None,
    label: str = "",
) -> TrainingRun:
    """Run ``epochs`` epochs of the ``.nnp``'s solver on ``train``, updating ``params`` in place."""
    import nnabla as nn
    import nnabla.functions as F

    if mode not in MODES:
        raise InfluenceError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "exact" and workdir is None:
        raise ValueError("mode 'exact' needs a working folder for the per-step snapshots")
    nn.seed(seed)
    spec = model.solver
    trainable = {name: params[name] for name in model.trainable}
    solver = create_solver(spec, trainable)
    schedule = learning_rate_schedule(spec)
    state_names = retrace_state_names(spec)
    snapshots = _SnapshotWriter(Path(workdir) / f"snapshots-{seed}") if mode == "exact" else None

    graphs: Dict[int, Tuple[object, object]] = {}
    steps: List[Step] = []
    plan = batch_order(len(train), batch_size, seed, epochs)
    step_in_epoch = 0
    for index, (epoch, rows) in enumerate(
        tqdm(plan, desc=f"{label} retraining".strip(), leave=False)
    ):
        if index and plan[index - 1][0] != epoch:
            step_in_epoch = 0
        if len(rows) not in graphs:
            graphs[len(rows)] = _training_graph(model, params, len(rows), F)
        graph, loss = graphs[len(rows)]
        _feed(graph, train.batch(rows))
        theta_before = [trainable[n].d.copy() for n in model.trainable] if snapshots else None
        loss.forward(clear_no_need_grad=True)
        solver.zero_grad()
        loss.backward(clear_buffer=True)
        if spec.weight_decay > 0:
            solver.weight_decay(spec.weight_decay)
        iteration = spec.start_iteration + index
        learning_rate = schedule(iteration)
        solver.set_learning_rate(learning_rate)
        solver.update()
        solver_step = _solver_step(solver, model.trainable)
        steps.append(Step(epoch, step_in_epoch, iteration, learning_rate, rows, solver_step))
        step_in_epoch += 1
        if snapshots is not None:
            snapshots.write(theta_before, _solver_state(solver, model.trainable, state_names))

    final_state = _solver_state(solver, model.trainable, state_names)
    final_theta = [trainable[n].d.copy() for n in model.trainable]
    kept = sum(a.nbytes for a in final_theta)
    kept += sum(a.nbytes for arrays in final_state.values() for a in arrays)
    return TrainingRun(
        steps=steps,
        final_theta=final_theta,
        final_state=final_state,
        mode=mode,
        snapshot_dir=snapshots.folder if snapshots else None,
        stored_bytes=snapshots.bytes_written if snapshots else kept,
        shapes=[tuple(trainable[n].shape) for n in model.trainable],
    )


def _training_graph(model: NnpModel, params: Dict[str, object], batch_size: int, F):
    graph = build_graph(model, params, batch_size, training=True)
    return graph, F.mean(graph.per_sample_loss)


def _feed(graph, batch: Dict[str, np.ndarray]) -> None:
    for name, variable in graph.inputs.items():
        variable.d = batch[name]


def _solver_step(solver, names: Sequence[str]) -> int:
    states = solver.get_states()
    return int(states[names[0]].t) if names and names[0] in states else 0


def _solver_state(
    solver, names: Sequence[str], state_names: Sequence[str]
) -> Dict[str, List[np.ndarray]]:
    states = solver.get_states()
    return {
        key: [np.array(states[n].pstate[key].data.get_data("r")) for n in names]
        for key in state_names
    }


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
        np.save(path, np.concatenate(parts).astype(np.float32))
        self.bytes_written += path.stat().st_size
        self.count += 1


def snapshots_in_reverse(
    run: TrainingRun,
) -> Iterator[Tuple[List[np.ndarray], Dict[str, List[np.ndarray]]]]:
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
