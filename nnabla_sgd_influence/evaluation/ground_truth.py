"""Leave-one-out retraining: the true change of the validation loss when a row is left out.

This is the counterfactual SGD of Hara et al. (2019): the same start, solver and batch order,
with the row's weight in its batch set to 0 (the batch mean keeps its denominator |S|). It runs
:func:`..influence.training.retrain` itself, with per-row weights, so it cannot drift from
the trials.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.datasets import Batches
from ..influence.graphs import GraphCache
from ..influence.parameters import ParameterSet
from ..influence.training import TrainingRun, retrain
from ..nnp.model import NnpModel


class LeaveOneOut:
    """Retrains ``model`` on ``train`` and measures the mean loss on ``val`` afterwards."""

    def __init__(
        self,
        model: NnpModel,
        train: Batches,
        val: Batches,
        *,
        batch_size: int,
        seed: int,
        epochs: int,
    ) -> None:
        self.model = model
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        self.epochs = epochs
        self.params = ParameterSet(model)
        self.graphs = GraphCache(model, self.params)
        self._evaluation = self.graphs.loss(len(val), training=False)
        self._evaluation.feed(val.batch(np.arange(len(val))))
        self.last_run: Optional[TrainingRun] = None

    def validation_loss(self, dropped: Optional[int] = None, weight: float = 0.0) -> float:
        """Mean validation loss after retraining with row ``dropped``'s weight set to ``weight``."""
        self.params.reset()
        weights = np.ones(len(self.train))
        if dropped is not None:
            weights[dropped] = weight
        self.last_run = retrain(
            self.graphs,
            self.model.solver,
            self.train,
            batch_size=self.batch_size,
            seed=self.seed,
            epochs=self.epochs,
            row_weights=weights,
        )
        self._evaluation.mean_loss.forward()
        return float(self._evaluation.mean_loss.d)

    def changes(self) -> np.ndarray:
        """True change of the mean validation loss when each row is left out."""
        base = self.validation_loss()
        return np.array([self.validation_loss(j) - base for j in range(len(self.train))])
