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
state after the update. For Adam, AdamW, RMSprop and Adagrad the preconditioner's own
dependence on the gradient is kept too: with ``s' = rho s + kappa g^2`` and
``theta' = ... - k m' / (sqrt(s') + eps)``, a change of g also moves s', by ``2 kappa g``, and
theta' by ``k m' / (2 sqrt(s') (sqrt(s') + eps)^2)`` per unit of s' (the ``s_slope`` below, times
``m'``, or times g when the solver has no momentum). With a small eps this term is as large as
the direct one. AMSGRAD and Adamax keep their preconditioner fixed. Other nnabla solvers
(Adadelta, AdaBelief, AdaBound, AMSBound, RMSpropGraves, Lars, Lamb, Lion) are retraced as
plain SGD at their scheduled learning rate, with a warning: their scores are rougher.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from .compat import solver_unavailable_message
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


# Second-moment dynamics s' = rho * s + kappa * g^2, per solver, from its hyper-parameters.
_SECOND_MOMENT_DYNAMICS = {
    "Adam": lambda h: (h["beta2"], 1.0 - h["beta2"]),
    "AdamW": lambda h: (h["beta2"], 1.0 - h["beta2"]),
    "RMSprop": lambda h: (h["decay"], 1.0 - h["decay"]),
    "Adagrad": lambda h: (1.0, 1.0),
}
_MOMENTUM_STATE = {"Adam": "mean", "AdamW": "mean"}


@dataclass
class StepUpdate:
    """Coefficients of one linearized solver step (see the module docstring)."""

    beta: float
    c: float
    p: List[np.ndarray]  # per trainable parameter; 0-d arrays for scalars
    q: Optional[List[np.ndarray]]
    d: float
    # Dependence of the preconditioner on the gradient (None: held fixed).
    s_rate: float = 0.0  # rho
    s_gain: float = 0.0  # kappa
    s_slope: Optional[List[np.ndarray]] = None  # k / (2 sqrt(s') (sqrt(s') + eps)^2)
    s_numerator: Optional[List[np.ndarray]] = None  # m' (None: the step's gradient g)


def initial_learning_rate(spec: SolverSpec) -> float:
    hyper = spec.hyper_parameters
    return float(hyper.get("alpha", hyper.get("lr", 0.001)))


def create_solver(spec: SolverSpec, params: Dict[str, object]):
    """An nnabla solver over ``params`` with the state the ``.nnp`` saved (when it saved one)."""
    import nnabla.solvers as S

    factory = getattr(S, spec.type, None)
    if factory is None:
        raise InfluenceError(solver_unavailable_message(spec.type))
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


def retrace_state_names(spec: SolverSpec) -> List[str]:
    """The solver-state arrays the linearization reads after each update."""
    names = [_SECOND_MOMENT[spec.type]] if spec.type in _SECOND_MOMENT else []
    if spec.type in _MOMENTUM_STATE:
        names.append(_MOMENTUM_STATE[spec.type])
    return names


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
    state: Dict[str, List[np.ndarray]],
    n_params: int,
    model_solver: bool = True,
) -> StepUpdate:
    """Coefficients of one step at ``learning_rate``; ``step_count`` is the solver's t after it.

    ``state`` holds the arrays named by :func:`retrace_state_names` after the update, per
    trainable parameter. With ``model_solver=False`` every solver is treated as plain SGD
    (kept to measure what the linearization buys).
    """
    h = spec.hyper_parameters
    lr = float(learning_rate)
    kind = spec.type if model_solver else "Sgd"

    def same(value: float) -> List[np.ndarray]:
        return [np.asarray(value, dtype=np.float64)] * n_params

    if kind in ("Momentum", "SgdW"):
        decay = lr / initial_learning_rate(spec) * h.get("wd", 0.0) if kind == "SgdW" else 0.0
        return StepUpdate(beta=h["momentum"], c=lr, p=same(1.0), q=None, d=decay)
    if kind == "Nesterov":
        gamma = h["momentum"]
        return StepUpdate(beta=gamma, c=lr, p=same(1.0 + gamma), q=same(-gamma), d=0.0)
    if kind not in _SECOND_MOMENT:
        return StepUpdate(beta=0.0, c=1.0, p=same(lr), q=None, d=0.0)

    second = [np.asarray(a, dtype=np.float64) for a in state[_SECOND_MOMENT[kind]]]
    eps = h.get("eps", 1e-8)
    t = max(int(step_count), 1)
    if kind in ("Adam", "AdamW"):
        b1, b2 = h["beta1"], h["beta2"]
        k = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        beta, c = b1, 1.0 - b1
    elif kind == "AMSGRAD":
        k, beta, c = lr, h["beta1"], 1.0 - h["beta1"]
    elif kind == "Adamax":
        k, beta, c = lr / (1.0 - h["beta1"] ** t), h["beta1"], 1.0 - h["beta1"]
    else:  # RMSprop, Adagrad
        k, beta, c = lr, 0.0, 1.0
    if kind == "Adamax":
        roots = [np.abs(u) for u in second]
    else:
        roots = [np.sqrt(np.maximum(v, 0.0)) for v in second]
    p = [k / (root + eps) for root in roots]
    decay = lr / initial_learning_rate(spec) * h.get("wd", 0.0) if kind == "AdamW" else 0.0
    update = StepUpdate(beta=beta, c=c, p=p, q=None, d=decay)
    if kind in _SECOND_MOMENT_DYNAMICS:
        update.s_rate, update.s_gain = _SECOND_MOMENT_DYNAMICS[kind](h)
        update.s_slope = [k / (2.0 * np.maximum(root, 1e-30) * (root + eps) ** 2) for root in roots]
        if kind in _MOMENTUM_STATE:
            update.s_numerator = [np.asarray(m, np.float64) for m in state[_MOMENTUM_STATE[kind]]]
    return update
