"""One trial of SGD-Influence: retrain, take the query gradient, retrace."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

from .datasets import Dataset
from .hvp import create_pass
from .model import NnpModel, create_parameter_variables
from .query import validation_gradient
from .retrace import retrace
from .solvers import warn_if_not_modeled
from .training import Step, retrain

log = logging.getLogger(__name__)

__all__ = ["Step", "TrialResult", "run_trial"]


@dataclass
class TrialResult:
    scores: np.ndarray  # influence per training row (negative: removing it lowers the loss)
    steps: List[Step]
    stored_bytes: int  # bytes kept for the retrace: final parameters, or every step's
    hvp_method: str
    validation_loss: float


def run_trial(
    model: NnpModel,
    train: Dataset,
    val: Dataset,
    *,
    batch_size: int,
    seed: int,
    epochs: int = 1,
    mode: str = "last",
    hvp: str = "auto",
    workdir: Path,
    label: str = "",
    model_solver: bool = True,
) -> TrialResult:
    """Score every row of ``train`` by its SGD-Influence on the mean loss of ``val``.

    Works on fresh copies of the model's parameters: ``model`` is left as loaded.
    """
    warn_if_not_modeled(model.solver)
    params = create_parameter_variables(model)
    step_pass = create_pass(model, params, hvp)
    run = retrain(
        model,
        params,
        train,
        batch_size=batch_size,
        seed=seed,
        epochs=epochs,
        mode=mode,
        workdir=workdir,
        label=label,
    )
    u, val_loss = validation_gradient(model, params, val, batch_size, label)
    scores = retrace(
        model, params, train, run, u, step_pass, model_solver=model_solver, label=label
    )
    return TrialResult(
        scores=scores,
        steps=run.steps,
        stored_bytes=run.stored_bytes,
        hvp_method=step_pass.name,
        validation_loss=val_loss,
    )
