"""Stage 5: retrace the recorded training backwards (Hara et al. 2019, Algorithm 2).

Generalized to the solvers of :mod:`.solvers`, whose linearized step is
``m' = beta m + c g``, ``theta' = (1 - d) theta - p m' - q m`` with
``g = (1/|S|) sum_{i in S} w_i g_i(theta) + lambda theta``. Going backwards with the adjoints
``a_theta`` (start: u) and ``a_m`` (start: 0) of the final validation loss::

    b        = a_m - p * a_theta          # total derivative with respect to m'
    v        = c * b                      # ... and with respect to g
    infl_j  -= <v, g_j(theta_t)> / |S|    # removing row j sets w_j from 1 to 0
    a_theta  = (1 - d) a_theta + (1/|S|) sum_i H_i v + lambda v
    a_m      = beta * b - q * a_theta'    # a_theta' is the adjoint before this step's update

For plain SGD (beta = 0, c = 1, p = lr) this is exactly Algorithm 2:
infl_j += (lr/|S|) <u, g_j>, u <- u - (lr/|S|) sum_i H_i u - lr lambda u.
Weight decay belongs to the solver: it enters the adjoint update, never a row's gradient.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

from .datasets import Dataset
from .model import NnpModel
from .solvers import linearize
from .training import TrainingRun, snapshots_in_reverse


def retrace(
    model: NnpModel,
    params: Dict[str, object],
    train: Dataset,
    run: TrainingRun,
    u: List[np.ndarray],
    step_pass,
    *,
    model_solver: bool = True,
    label: str = "",
) -> np.ndarray:
    """Influence of every training row on the validation loss (negative: removing it helps)."""
    theta = [params[n] for n in model.trainable]
    untouched = _non_trainable_snapshot(model, params)
    spec = model.solver
    scores = np.zeros(len(train))
    a_theta = [np.asarray(a, dtype=np.float64) for a in u]
    a_m = [np.zeros_like(a) for a in a_theta]
    _set(theta, run.final_theta)
    snapshots = snapshots_in_reverse(run) if run.mode == "exact" else None
    try:
        for step in tqdm(run.steps[::-1], desc=f"{label} retrace".strip(), leave=False):
            moment: Optional[List[np.ndarray]] = run.final_second_moment
            if snapshots is not None:
                theta_t, moment = next(snapshots)
                _set(theta, theta_t)
            update = linearize(
                spec, step.learning_rate, step.solver_step, moment, len(theta), model_solver
            )
            b = [am - p * at for am, p, at in zip(a_m, update.p, a_theta)]
            v = [update.c * x for x in b]
            dots, hv = step_pass(train.batch(step.rows), [x.astype(np.float32) for x in v])
            size = len(step.rows)
            scores[step.rows] -= dots / size
            decay = spec.weight_decay
            new_a_theta = [
                (1.0 - update.d) * at + h / size + decay * x for at, h, x in zip(a_theta, hv, v)
            ]
            if update.q is None:
                a_m = [update.beta * x for x in b]
            else:
                a_m = [update.beta * x - q * at for x, q, at in zip(b, update.q, a_theta)]
            a_theta = new_a_theta
    finally:
        _set(theta, run.final_theta)
        _restore(params, untouched)
    return scores


def _set(variables, arrays) -> None:
    for variable, value in zip(variables, arrays):
        variable.d = value


def _non_trainable_snapshot(model: NnpModel, params: Dict[str, object]) -> Dict[str, np.ndarray]:
    """Arrays the retrace's forward passes may touch (BatchNormalization running statistics)."""
    trainable = set(model.trainable)
    return {name: v.d.copy() for name, v in params.items() if name not in trainable}


def _restore(params: Dict[str, object], arrays: Dict[str, np.ndarray]) -> None:
    for name, value in arrays.items():
        params[name].d = value
