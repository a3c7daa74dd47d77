"""Ground truth for influence estimates: leave-one-out retraining and rank agreement.

Used by the tests and the benchmarks to measure the engine against what actually happens when a
row is left out of training (Hara et al. 2019, Section 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .model import NnpModel, build_graph, create_parameter_variables
from .solvers import create_solver, learning_rate_schedule
from .training import batch_order


class LeaveOneOut:
    """Retrain with the same start, solver and batch order, with one row's weight set to 0.

    This is the counterfactual SGD of Hara et al.: the row is dropped from its batch and the
    batch mean keeps its denominator |S|.
    """

    def __init__(self, model: NnpModel, train, val, *, batch_size: int, seed: int, epochs: int):
        import nnabla as nn
        import nnabla.functions as F

        self.model = model
        self.train = train
        self.plan = batch_order(len(train), batch_size, seed, epochs)
        self.params = create_parameter_variables(model)
        self.initial = {k: v.d.copy() for k, v in self.params.items()}
        self.schedule = learning_rate_schedule(model.solver)
        self.graphs: Dict[int, tuple] = {}
        for _, rows in self.plan:
            if len(rows) not in self.graphs:
                graph = build_graph(model, self.params, len(rows), training=True)
                weights = nn.Variable.from_numpy_array(np.ones(len(rows), np.float32))
                loss = F.sum(weights * graph.per_sample_loss) / len(rows)
                self.graphs[len(rows)] = (graph, weights, loss)
        self.eval_graph = build_graph(model, self.params, len(val), training=False)
        for name, value in val.batch(np.arange(len(val))).items():
            if name in self.eval_graph.inputs:
                self.eval_graph.inputs[name].d = value
        self.eval_loss = F.mean(self.eval_graph.per_sample_loss)

    def validation_loss(self, dropped: Optional[int] = None, weight: float = 0.0) -> float:
        """Mean validation loss after retraining with row ``dropped``'s weight set to ``weight``."""
        for name, value in self.initial.items():
            self.params[name].d = value
        trainable = {n: self.params[n] for n in self.model.trainable}
        solver = self.solver = create_solver(self.model.solver, trainable)
        for index, (_, rows) in enumerate(self.plan):
            graph, weights, loss = self.graphs[len(rows)]
            for name, value in self.train.batch(rows).items():
                graph.inputs[name].d = value
            weights.d = np.where(rows == dropped, weight, 1.0).astype(np.float32)
            loss.forward()
            solver.zero_grad()
            loss.backward()
            if self.model.solver.weight_decay > 0:
                solver.weight_decay(self.model.solver.weight_decay)
            solver.set_learning_rate(self.schedule(self.model.solver.start_iteration + index))
            solver.update()
        self.eval_loss.forward()
        return float(self.eval_loss.d)

    def trained_model(self) -> NnpModel:
        """The model after the full (no row left out) run, with its solver's state."""
        import dataclasses

        self.validation_loss()
        state = {
            name: {
                **{k: np.array(v.data.get_data("r")) for k, v in s.pstate.items()},
                "t": np.array(s.t),
            }
            for name, s in self.solver.get_states().items()
        }
        parameters = {k: v.d.copy() for k, v in self.params.items()}
        solver = dataclasses.replace(
            self.model.solver,
            state=state,
            start_iteration=self.model.solver.start_iteration + len(self.plan),
        )
        return dataclasses.replace(self.model, parameters=parameters, solver=solver)

    def changes(self) -> np.ndarray:
        """True change of the mean validation loss when each row is left out."""
        base = self.validation_loss()
        return np.array([self.validation_loss(j) - base for j in range(len(self.train))])


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b, by the definition over all pairs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordant = float(np.sum(da * db))
    return concordant / np.sqrt(float(np.sum(da != 0)) * float(np.sum(db != 0)))


def extreme_jaccard(estimate: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Jaccard index of the k most positive and k most negative rows (Hara et al., Table 1)."""

    def extremes(x: np.ndarray) -> set:
        order = np.argsort(x, kind="stable")
        return set(order[:k]) | set(order[-k:])

    a, b = extremes(estimate), extremes(truth)
    return len(a & b) / len(a | b)


def flat(arrays: List[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def reinitialized(model: NnpModel, seed: int) -> NnpModel:
    """``model`` with fresh trainable parameters (scaled normal weights, zero biases) and no
    solver state, to study training from scratch."""
    import dataclasses

    rng = np.random.RandomState(seed)
    parameters = {}
    for name, value in model.parameters.items():
        if name in model.trainable and value.ndim > 1:
            scale = np.sqrt(1.0 / value.shape[0])
            parameters[name] = (rng.randn(*value.shape) * scale).astype(np.float32)
        elif name in model.trainable:
            parameters[name] = np.zeros_like(value)
        else:
            parameters[name] = value.copy()
    solver = dataclasses.replace(model.solver, state={}, start_iteration=0)
    return dataclasses.replace(model, parameters=parameters, solver=solver)


class FirstRows:
    """The first ``n`` rows of a dataset, seen by the engine as a dataset of its own."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset = dataset
        self.n = min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        if len(rows) and int(np.max(rows)) >= self.n:
            raise IndexError(f"row {int(np.max(rows))} is beyond the first {self.n} rows")
        return self.dataset.batch(rows)


def with_solver(
    model: NnpModel, kind: str, hyper_parameters: Dict[str, float], weight_decay: float = 0.0
) -> NnpModel:
    """``model`` trained by another nnabla solver, starting without solver state."""
    import dataclasses

    solver = dataclasses.replace(
        model.solver,
        type=kind,
        hyper_parameters=dict(hyper_parameters),
        weight_decay=weight_decay,
        state={},
    )
    return dataclasses.replace(model, solver=solver)


@dataclass
class Agreement:
    tau: float  # Kendall's tau between estimated and true influence
    jaccard: float  # of the 10 most positive and 10 most negative rows


def agreement_with_leave_one_out(
    model: NnpModel,
    train,
    val,
    *,
    epochs: int,
    mode: str,
    workdir: Path,
    batch_size: int = 64,
    seed: int = 0,
    model_solver: bool = True,
) -> Agreement:
    """How well one trial's scores rank rows like leave-one-out retraining does."""
    from .engine import run_trial

    truth = LeaveOneOut(model, train, val, batch_size=batch_size, seed=seed, epochs=epochs)
    changes = truth.changes()
    estimate = run_trial(
        model,
        train,
        val,
        batch_size=batch_size,
        seed=seed,
        epochs=epochs,
        mode=mode,
        workdir=workdir,
        model_solver=model_solver,
    ).scores
    return Agreement(kendall_tau(estimate, changes), extreme_jaccard(estimate, changes))
