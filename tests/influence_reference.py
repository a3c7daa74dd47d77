"""Independent references for the engine's tests: leave-one-out retraining and rank statistics."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from nnabla_sgd_influence.model import NnpModel, build_graph, create_parameter_variables
from nnabla_sgd_influence.solvers import create_solver, learning_rate_schedule
from nnabla_sgd_influence.training import batch_order


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

    def validation_loss(self, dropped: Optional[int] = None) -> float:
        for name, value in self.initial.items():
            self.params[name].d = value
        trainable = {n: self.params[n] for n in self.model.trainable}
        solver = create_solver(self.model.solver, trainable)
        for index, (_, rows) in enumerate(self.plan):
            graph, weights, loss = self.graphs[len(rows)]
            for name, value in self.train.batch(rows).items():
                graph.inputs[name].d = value
            weights.d = (rows != dropped).astype(np.float32)
            loss.forward()
            solver.zero_grad()
            loss.backward()
            if self.model.solver.weight_decay > 0:
                solver.weight_decay(self.model.solver.weight_decay)
            solver.set_learning_rate(self.schedule(self.model.solver.start_iteration + index))
            solver.update()
        self.eval_loss.forward()
        return float(self.eval_loss.d)

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


class Subset:
    """The first ``n`` rows of a dataset, seen by the engine as a dataset of its own."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset = dataset
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        assert np.max(rows) < self.n
        return self.dataset.batch(rows)


def flat(arrays: List[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])
