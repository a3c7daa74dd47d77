"""The ``.nnp``'s solver: build it in nnabla, schedule its learning rate, and linearize its update.

The retrace needs the derivative of one solver step with respect to the gradient it was fed.
Every supported solver is written in one form, with a momentum buffer ``m`` and per-step
coefficients (``p`` and ``q`` may be vectors: a diagonal preconditioner)::

    m'     = beta * m + c * g                          g = batch-mean row gradient + lambda * theta
    theta' = (1 - d) * theta - p * m' - q * m

=============  ======  =========  ====================================================  ======
solver         beta    c          p                                                     q, d
=============  ======  =========  ====================================================  ======
Sgd            0       1          lr                                                    0, 0
Momentum       gamma   lr         1                                                     0, 0
Nesterov       gamma   lr         1 + gamma                                             -gamma, 0
SgdW           gamma   lr         1                                                     0, lr/lr0*wd
Adam           beta1   1 - beta1  lr * sqrt(1 - beta2^t) / (1 - beta1^t) / (sqrt(v) + eps)   0, 0
AdamW          beta1   1 - beta1  as Adam                                               0, lr/lr0*wd
AMSGRAD        beta1   1 - beta1  lr / (sqrt(v_hat) + eps)                              0, 0
Adamax         beta1   1 - beta1  lr / (1 - beta1^t) / (u + eps)                        0, 0
RMSprop        0       1          lr / (sqrt(v) + eps)                                  0, 0
Adagrad        0       1          lr / (sqrt(v) + eps)                                  0, 0
=============  ======  =========  ====================================================  ======

``t`` is the solver's step count after the update and ``v``/``u``/``v_hat`` its second-moment
state after the update. The preconditioner is held fixed: its own dependence on the gradient
(through ``v``) is dropped, which is the linearization used here. Other nnabla solvers
(Adadelta, AdaBelief, AdaBound, AMSBound, RMSpropGraves, Lars, Lamb, Lion) are retraced as
plain SGD at their scheduled learning rate, with a warning: their scores are rougher.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import InfluenceError
from .model import SolverSpec

log = logging.getLogger(__name__)

MODELED_SOLVERS = (
    "Sgd",
    "Momentum",
    "Nesterov",
    "SgdW",
    "Adam",
    "AdamW",
    "AMSGRAD",
    "Adamax",
    "RMSprop",
    "Adagrad",
)

# Which solver-state array feeds the preconditioner, per solver.
_SECOND_MOMENT = {
    "Adam": "var",
    "AdamW": "var",
    "AMSGRAD": "v_hat",
    "Adamax": "u",
    "RMSprop": "v",
    "Adagrad": "v",
}


@dataclass
class StepUpdate:
    """Coefficients of one linearized solver step (see the module docstring)."""

    beta: float
    c: float
    p: List[np.ndarray]  # per trainable parameter; 0-d arrays for scalars
    q: Optional[List[np.ndarray]]
    d: float


def initial_learning_rate(spec: SolverSpec) -> float:
    hyper = spec.hyper_parameters
    return float(hyper.get("alpha", hyper.get("lr", 0.001)))


def create_solver(spec: SolverSpec, params: Dict[str, object]):
    """An nnabla solver over ``params`` with the state the ``.nnp`` saved (when it saved one)."""
    import nnabla.solvers as S

    factory = getattr(S, spec.type, None)
    if factory is None:
        raise InfluenceError(f"solver '{spec.type}' is not available in this nnabla")
    accepted = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in spec.hyper_parameters.items() if k in accepted}
    solver = factory(**kwargs)
    solver.set_parameters(params)
    _restore_state(solver, spec, params)
    return solver


def _restore_state(solver, spec: SolverSpec, params: Dict[str, object]) -> None:
    import nnabla as nn

    if not spec.state:
        return
    states = solver.get_states()
    restored = 0
    for name, saved in spec.state.items():
        if name not in states or name not in params:
            continue
        state = states[name]
        for key, value in saved.items():
            if key == "t":
                state.t = int(np.asarray(value))
            elif key in state.pstate and state.pstate[key].shape == np.shape(value):
                state.pstate[key].data.copy_from(
                    nn.NdArray.from_numpy_array(np.asarray(value, dtype=np.float32))
                )
        restored += 1
    solver.set_states(states)
    log.debug("continuing the saved %s state of %d parameters", spec.type, restored)


def learning_rate_schedule(spec: SolverSpec) -> Callable[[int], float]:
    """Learning rate at a training iteration, following the ``.nnp``'s scheduler."""
    from nnabla.utils import learning_rate_scheduler as lrs

    base = initial_learning_rate(spec)
    solver = spec.proto
    kind = solver.lr_scheduler_type
    scheduler = lrs.ExponentialScheduler(base, 1.0, 1)
    if kind == "Polynomial":
        p = solver.polynomial_scheduler_param
        if p.power != 0.0:
            scheduler = lrs.PolynomialScheduler(base, p.max_iter, p.power)
    elif kind == "Cosine":
        scheduler = lrs.CosineScheduler(base, solver.cosine_scheduler_param.max_iter)
    elif kind == "Exponential":
        p = solver.exponential_scheduler_param
        if p.gamma != 1.0:
            scheduler = lrs.ExponentialScheduler(base, p.gamma, max(int(p.iter_interval), 1))
    elif kind == "Step":
        p = solver.step_scheduler_param
        if p.gamma != 1.0 and len(p.iter_steps) > 0:
            scheduler = lrs.StepScheduler(base, p.gamma, list(p.iter_steps))
    elif kind == "":
        if solver.lr_decay_interval != 0 or solver.lr_decay != 0.0:
            decay = solver.lr_decay if solver.lr_decay > 0.0 else 1.0
            scheduler = lrs.ExponentialScheduler(base, decay, max(int(solver.lr_decay_interval), 1))
    else:
        raise InfluenceError(f"learning-rate scheduler '{kind}' is not supported")
    if solver.lr_warmup_scheduler_type == "Linear":
        warmup = int(solver.linear_warmup_scheduler_param.warmup_iter)
        if warmup >= 1:
            scheduler = lrs.LinearWarmupScheduler(scheduler, warmup)
    return lambda iteration: float(scheduler.get_learning_rate(iteration))


def preconditioner_state_name(spec: SolverSpec) -> Optional[str]:
    """The solver-state array the linearization reads, or None when it needs none."""
    return _SECOND_MOMENT.get(spec.type)


def warn_if_not_modeled(spec: SolverSpec) -> None:
    if spec.type not in MODELED_SOLVERS:
        log.warning(
            "solver %s is retraced as plain SGD at its learning rate; scores are approximate",
            spec.type,
        )


def linearize(
    spec: SolverSpec,
    learning_rate: float,
    step_count: int,
    second_moment: Optional[Sequence[np.ndarray]],
    n_params: int,
    model_solver: bool = True,
) -> StepUpdate:
    """Coefficients of one step at ``learning_rate``; ``step_count`` is the solver's t after it.

    ``second_moment`` holds the state array named by :func:`preconditioner_state_name`, per
    trainable parameter. With ``model_solver=False`` every solver is treated as plain SGD
    (kept to measure what the linearization buys).
    """
    h = spec.hyper_parameters
    lr = float(learning_rate)
    kind = spec.type if model_solver else "Sgd"
    scalar = np.asarray

    def same(value: float) -> List[np.ndarray]:
        return [scalar(value, dtype=np.float64)] * n_params

    if kind in ("Momentum", "SgdW"):
        decay = lr / initial_learning_rate(spec) * h.get("wd", 0.0) if kind == "SgdW" else 0.0
        return StepUpdate(beta=h["momentum"], c=lr, p=same(1.0), q=None, d=decay)
    if kind == "Nesterov":
        gamma = h["momentum"]
        return StepUpdate(beta=gamma, c=lr, p=same(1.0 + gamma), q=same(-gamma), d=0.0)
    if kind in _SECOND_MOMENT:
        if second_moment is None:
            raise ValueError(f"{kind} needs its second-moment state")
        eps = h.get("eps", 1e-8)
        t = max(int(step_count), 1)
        if kind in ("Adam", "AdamW"):
            b1, b2 = h["beta1"], h["beta2"]
            scale = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
            p = [scale / (np.sqrt(np.maximum(v, 0.0)) + eps) for v in second_moment]
        elif kind == "AMSGRAD":
            b1 = h["beta1"]
            p = [lr / (np.sqrt(np.maximum(v, 0.0)) + eps) for v in second_moment]
        elif kind == "Adamax":
            b1 = h["beta1"]
            p = [lr / (1.0 - b1**t) / (np.abs(u) + eps) for u in second_moment]
        else:  # RMSprop, Adagrad
            p = [lr / (np.sqrt(np.maximum(v, 0.0)) + eps) for v in second_moment]
        if kind in ("RMSprop", "Adagrad"):
            return StepUpdate(beta=0.0, c=1.0, p=p, q=None, d=0.0)
        decay = lr / initial_learning_rate(spec) * h.get("wd", 0.0) if kind == "AdamW" else 0.0
        return StepUpdate(beta=b1, c=1.0 - b1, p=p, q=None, d=decay)
    return StepUpdate(beta=0.0, c=1.0, p=same(lr), q=None, d=0.0)
