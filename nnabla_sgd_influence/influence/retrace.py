"""Retrace the recorded training backwards (Hara et al. 2019, Algorithm 2).

Generalized to the solvers of :mod:`..nnp.solvers`, whose linearized step is
``m' = beta m + c g``, ``s' = rho s + kappa g^2``, ``theta' = (1 - d) theta - p m' - q m`` (p
depending on s') with ``g = (1/|S|) sum_{i in S} w_i g_i(theta) + lambda theta``. Going backwards
with the adjoints ``a_theta`` (start: u), ``a_m`` and ``a_s`` (start: 0) of the final validation
loss, where r = s_slope * m' is d theta'/d s'::

    b        = a_m - p * a_theta          # total derivative with respect to m'
    b_s      = a_s + r * a_theta          # ... with respect to s'
    v        = c * b + 2 kappa g * b_s    # ... and with respect to g
    infl_j  -= <v, g_j(theta_t)> / |S|    # removing row j sets w_j from 1 to 0
    a_theta  = (1 - d) a_theta + (1/|S|) sum_i H_i v + lambda v
    a_m      = beta * b - q * a_theta'    # a_theta' is the adjoint before this step's update
    a_s      = rho * b_s

For plain SGD (beta = 0, c = 1, p = lr) this is exactly Algorithm 2:
infl_j += (lr/|S|) <u, g_j>, u <- u - (lr/|S|) sum_i H_i u - lr lambda u.
Weight decay belongs to the solver: it enters the adjoint update, never a row's gradient.

A value that is not finite stops the retrace at the step where it appears, with the layer of the
pass that made it (:meth:`.hvp.StepPass.first_non_finite_layer`): one NaN in u would reach every
earlier step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from ..data.datasets import Batch, Batches
from ..errors import InfluenceError
from ..nnp.solvers import SolverSpec, StepUpdate, linearize
from ..runtime.progress import SILENT, Progress
from ..runtime.signals import checkpoints
from .hvp import StepPass
from .parameters import ParameterSet
from .training import Step, TrainingRun, snapshots_in_reverse


@dataclass
class Adjoints:
    """Derivatives of the final validation loss with respect to theta, m and s at one step."""

    theta: List[np.ndarray]
    m: List[np.ndarray]
    s: List[np.ndarray]

    @classmethod
    def start(cls, u: List[np.ndarray]) -> Adjoints:
        theta = [np.asarray(a, dtype=np.float64) for a in u]
        return cls(theta, [np.zeros_like(a) for a in theta], [np.zeros_like(a) for a in theta])


def retrace(
    params: ParameterSet,
    spec: SolverSpec,
    train: Batches,
    run: TrainingRun,
    u: List[np.ndarray],
    step_pass: StepPass,
    *,
    retrace_as_sgd: bool = False,
    progress: Progress = SILENT,
) -> np.ndarray:
    """Influence of every training row on the validation loss (negative: removing it helps).

    Every parameter, BatchNormalization's running statistics included, is as it was when the
    retrace returns.
    """
    scores = np.zeros(len(train))
    adjoints = Adjoints.start(u)
    snapshots = snapshots_in_reverse(run) if run.mode == "exact" else None
    with params.preserved():
        params.set_trainable(run.final_theta)
        for step in checkpoints(progress.track(run.steps[::-1], "retrace")):
            state = run.final_state
            if snapshots is not None:
                theta_t, state = next(snapshots)
                params.set_trainable(theta_t)
            update = linearize(
                spec, step.learning_rate, step.solver_step, state, len(params.theta), retrace_as_sgd
            )
            batch = train.batch(step.rows)
            try:
                dots, adjoints = step_back(adjoints, update, step_pass, batch, params, spec)
            except NotFinite as problem:
                raise InfluenceError(_not_finite_message(problem, step, step_pass)) from None
            scores[step.rows] -= dots / len(step.rows)
    return scores


class NotFinite(Exception):
    """A step's pass gave a value that is not finite; ``v`` is the direction it ran along."""

    def __init__(self, batch: Batch, v: List[np.ndarray], what: str) -> None:
        super().__init__(what)
        self.batch, self.v, self.what = batch, v, what


def _not_finite_message(problem: NotFinite, step: Step, step_pass: StepPass) -> str:
    where = f"epoch {step.epoch}, step {step.step} (iteration {step.iteration})"
    if problem.what == "direction":
        return (
            f"the retrace's adjoint grew beyond float32 at {where}: the retraining's updates "
            "are too far from linear to retrace (check the model's solver and learning rate)"
        )
    if step_pass.name != "autodiff":
        return (
            f"finite differences gave {problem.what} at {where}, although the retraining was finite"
        )
    layer = step_pass.first_non_finite_layer(problem.batch, problem.v)
    return (
        f"the second-order pass gave {problem.what} at {where}"
        + (f", first {layer}" if layer else "")
        + ", although the retraining was finite; use --hvp finite-difference"
    )


def step_back(
    adjoints: Adjoints,
    update: StepUpdate,
    step_pass: StepPass,
    batch: Batch,
    params: ParameterSet,
    spec: SolverSpec,
):
    """(<v, g_j> for every row j of the step, the adjoints before the step); see the docstring."""
    size = len(next(iter(batch.values())))
    decay = spec.weight_decay
    a_theta, a_m, a_s = adjoints.theta, adjoints.m, adjoints.s
    b = [am - p * at for am, p, at in zip(a_m, update.p, a_theta)]
    v = [update.c * x for x in b]
    if update.s_slope is None:
        direction = _finite_float32(v, batch)
        dots, hv = step_pass(batch, direction)
    else:
        # The solver's own gradient: batch mean plus weight decay, at theta_t.
        gradient = step_pass.prepare(batch)
        _check_finite(np.zeros(0), gradient, batch, [x.astype(np.float32) for x in v])
        g = [
            total / size + decay * p.d.astype(np.float64)
            for total, p in zip(gradient, params.theta)
        ]
        numerator = update.s_numerator or g
        b_s = [
            s + slope * n * at for s, slope, n, at in zip(a_s, update.s_slope, numerator, a_theta)
        ]
        v = [x + 2.0 * update.s_gain * gi * bs for x, gi, bs in zip(v, g, b_s)]
        a_s = [update.s_rate * bs for bs in b_s]
        direction = _finite_float32(v, batch)
        dots, hv = step_pass.finish(direction)
    _check_finite(dots, hv, batch, direction)
    new_a_theta = [(1.0 - update.d) * at + h / size + decay * x for at, h, x in zip(a_theta, hv, v)]
    if update.q is None:
        a_m = [update.beta * x for x in b]
    else:
        a_m = [update.beta * x - q * at for x, q, at in zip(b, update.q, a_theta)]
    return dots, Adjoints(new_a_theta, a_m, a_s)


def _finite_float32(arrays: List[np.ndarray], batch: Batch) -> List[np.ndarray]:
    """``arrays`` as float32, the pass's direction; NotFinite when a value does not fit."""
    with np.errstate(over="ignore"):
        direction = [a.astype(np.float32) for a in arrays]
    if not all(np.isfinite(a).all() for a in direction):
        raise NotFinite(batch, direction, "direction")
    return direction


def _check_finite(
    dots: np.ndarray, hv: List[np.ndarray], batch: Batch, v: List[np.ndarray]
) -> None:
    values = [dots, *hv]
    if not all(np.isfinite(a).all() for a in values):
        nan = any(np.isnan(a).any() for a in values)
        raise NotFinite(batch, v, "NaN" if nan else "an infinite value")
