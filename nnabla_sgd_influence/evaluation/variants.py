"""Models that experiments start from: another solver, fresh weights, more training."""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np

from ..data.datasets import Batches
from ..influence.graphs import GraphCache
from ..influence.parameters import ParameterSet
from ..influence.training import retrain
from ..nnp.model import NnpModel


def with_solver(
    model: NnpModel, kind: str, hyper_parameters: Dict[str, float], weight_decay: float = 0.0
) -> NnpModel:
    """``model`` trained by another nnabla solver, starting without solver state."""
    solver = dataclasses.replace(
        model.solver,
        type=kind,
        hyper_parameters=dict(hyper_parameters),
        weight_decay=weight_decay,
        state={},
    )
    return dataclasses.replace(model, solver=solver)


def reinitialized(model: NnpModel, seed: int) -> NnpModel:
    """``model`` with fresh trainable parameters (scaled normal weights, zero biases) and no
    solver state, to study training from scratch."""
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


def trained_further(
    model: NnpModel, train: Batches, *, batch_size: int, seed: int, epochs: int
) -> NnpModel:
    """``model`` after ``epochs`` more epochs of its solver, carrying that solver's state."""
    params = ParameterSet(model)
    run = retrain(
        GraphCache(model, params),
        model.solver,
        train,
        batch_size=batch_size,
        seed=seed,
        epochs=epochs,
        row_weights=np.ones(len(train)),
    )
    solver = dataclasses.replace(
        model.solver,
        state=run.solver_state,
        start_iteration=model.solver.start_iteration + len(run.steps),
    )
    parameters = {name: params[name].d.copy() for name in model.parameters}
    return dataclasses.replace(model, parameters=parameters, solver=solver)
