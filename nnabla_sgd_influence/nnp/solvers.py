"""The ``.nnp``'s solver: read it, build it in nnabla, schedule its learning rate, linearize it.

The retrace needs the derivative of one solver step with respect to the gradient it was fed.
Every solver in :data:`SOLVERS` is written in one form, with a momentum buffer ``m`` and
per-step coefficients (``p`` and ``q`` may be vectors: a diagonal preconditioner)::

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
the direct one. AMSGRAD and Adamax keep their preconditioner fixed. The other nnabla solvers
in :data:`SOLVERS` (Adadelta, AdaBelief, AdaBound, AMSBound, RMSpropGraves, Lars, Lamb, Lion)
are retraced as plain SGD at their scheduled learning rate, with a warning.

Adding a solver is one :class:`SolverModel` entry in :data:`SOLVERS` (and its test).
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InfluenceError
from .archive import PicklesProtoAsBytes
from .compat import solver_parameters, solver_unavailable_message

log = logging.getLogger(__name__)

SolverState = Dict[str, List[np.ndarray]]  # state name -> one array per trainable parameter


@dataclass
class SolverSpec(PicklesProtoAsBytes):
    """The optimizer's solver as written in the ``.nnp``."""

    PROTO_MESSAGE = "Solver"

    type: str
    hyper_parameters: Dict[str, float]
    weight_decay: float
    proto: object  # the nnabla_pb2.Solver message, for the learning-rate schedule
    # State saved by NNC (per parameter: arrays by state name, plus the step count "t").
    state: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    # Iteration at which the saved training stopped; retraining continues the schedule there.
    start_iteration: int = 0


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


@dataclass(frozen=True)
class StepInputs:
    """What a linearization reads: hyper-parameters, this step's rate and count, the state."""

    hyper: Dict[str, float]
    learning_rate: float
    t: int  # the solver's step count after the update, at least 1
    state: SolverState  # arrays named by the solver's ``state_names``, after the update
    n_params: int

    def same(self, value: float) -> List[np.ndarray]:
        return [np.asarray(value, dtype=np.float64)] * self.n_params


Linearization = Callable[[StepInputs], StepUpdate]


@dataclass(frozen=True)
class SolverModel:
    """One nnabla solver: where the ``.nnp`` keeps its settings and how the retrace sees it."""

    param_field: str  # field of nnabla_pb2.Solver holding its hyper-parameters
    linearize: Optional[Linearization] = None  # None: retraced as plain SGD, with a warning
    state_names: Tuple[str, ...] = ()  # solver-state arrays the linearization reads
    decoupled_decay: bool = False  # theta' = (1 - lr/lr0 * wd) theta - ... (SgdW, AdamW)


# --------------------------------------------------------------------------------------
# Linearizations


def _sgd(step: StepInputs) -> StepUpdate:
    return StepUpdate(beta=0.0, c=1.0, p=step.same(step.learning_rate), q=None, d=0.0)


def _momentum(step: StepInputs) -> StepUpdate:
    return StepUpdate(
        beta=step.hyper["momentum"], c=step.learning_rate, p=step.same(1.0), q=None, d=0.0
    )


def _nesterov(step: StepInputs) -> StepUpdate:
    gamma = step.hyper["momentum"]
    return StepUpdate(
        beta=gamma, c=step.learning_rate, p=step.same(1.0 + gamma), q=step.same(-gamma), d=0.0
    )


def _adam(step: StepInputs) -> StepUpdate:
    h, t = step.hyper, step.t
    b1, b2 = h["beta1"], h["beta2"]
    k = step.learning_rate * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
    roots = _square_roots(step.state["var"])
    update = _preconditioned(step, k, b1, roots)
    return _with_second_moment_response(update, step, k, roots, (b2, 1.0 - b2), step.state["mean"])


def _amsgrad(step: StepInputs) -> StepUpdate:
    b1 = step.hyper["beta1"]
    return _preconditioned(step, step.learning_rate, b1, _square_roots(step.state["v_hat"]))


def _adamax(step: StepInputs) -> StepUpdate:
    b1 = step.hyper["beta1"]
    k = step.learning_rate / (1.0 - b1**step.t)
    roots = [np.abs(np.asarray(u, dtype=np.float64)) for u in step.state["u"]]
    return _preconditioned(step, k, b1, roots)


def _rmsprop(step: StepInputs) -> StepUpdate:
    roots = _square_roots(step.state["v"])
    update = _preconditioned(step, step.learning_rate, 0.0, roots)
    decay = step.hyper["decay"]
    return _with_second_moment_response(
        update, step, step.learning_rate, roots, (decay, 1.0 - decay)
    )


def _adagrad(step: StepInputs) -> StepUpdate:
    roots = _square_roots(step.state["v"])
    update = _preconditioned(step, step.learning_rate, 0.0, roots)
    return _with_second_moment_response(update, step, step.learning_rate, roots, (1.0, 1.0))


def _square_roots(second: List[np.ndarray]) -> List[np.ndarray]:
    return [np.sqrt(np.maximum(np.asarray(v, dtype=np.float64), 0.0)) for v in second]


def _preconditioned(step: StepInputs, k: float, beta: float, roots: List[np.ndarray]) -> StepUpdate:
    """m' = beta m + (1 - beta) g, theta' -= k m' / (root + eps) (beta = 0: no momentum)."""
    eps = step.hyper.get("eps", 1e-8)
    p = [k / (root + eps) for root in roots]
    return StepUpdate(beta=beta, c=1.0 - beta, p=p, q=None, d=0.0)


def _with_second_moment_response(
    update: StepUpdate,
    step: StepInputs,
    k: float,
    roots: List[np.ndarray],
    dynamics: Tuple[float, float],
    momentum: Optional[List[np.ndarray]] = None,
) -> StepUpdate:
    """Add s' = rho s + kappa g^2 and theta's response to it (see the module docstring)."""
    eps = step.hyper.get("eps", 1e-8)
    update.s_rate, update.s_gain = dynamics
    update.s_slope = [k / (2.0 * np.maximum(root, 1e-30) * (root + eps) ** 2) for root in roots]
    if momentum is not None:
        update.s_numerator = [np.asarray(m, np.float64) for m in momentum]
    return update


# --------------------------------------------------------------------------------------
# The registry

SOLVERS: Dict[str, SolverModel] = {
    "Sgd": SolverModel("sgd_param", _sgd),
    "Momentum": SolverModel("momentum_param", _momentum),
    "Nesterov": SolverModel("nesterov_param", _nesterov),
    "SgdW": SolverModel("sgdw_param", _momentum, decoupled_decay=True),
    "Adam": SolverModel("adam_param", _adam, ("var", "mean")),
    "AdamW": SolverModel("adamw_param", _adam, ("var", "mean"), decoupled_decay=True),
    "AMSGRAD": SolverModel("amsgrad_param", _amsgrad, ("v_hat",)),
    "Adamax": SolverModel("adamax_param", _adamax, ("u",)),
    "RMSprop": SolverModel("rmsprop_param", _rmsprop, ("v",)),
    "Adagrad": SolverModel("adagrad_param", _adagrad, ("v",)),
    "Adadelta": SolverModel("adadelta_param"),
    "AdaBelief": SolverModel("adabelief_param"),
    "AdaBound": SolverModel("adabound_param"),
    "AMSBound": SolverModel("amsbound_param"),
    "RMSpropGraves": SolverModel("rmsprop_graves_param"),
    "Lars": SolverModel("lars_param"),
    "Lamb": SolverModel("lamb_param"),
    "Lion": SolverModel("lion_param"),
}
_ALIASES = {"SGD": "Sgd"}  # spellings NNC writes for the same solver

MODELED_SOLVERS = tuple(name for name, entry in SOLVERS.items() if entry.linearize is not None)


def solver_model(kind: str) -> SolverModel:
    """The registry entry of solver ``kind``, or an error naming it."""
    entry = SOLVERS.get(_ALIASES.get(kind, kind))
    if entry is None:
        raise InfluenceError(f"solver '{kind}' is not supported by nnabla")
    return entry


def linearize(
    spec: SolverSpec,
    learning_rate: float,
    step_count: int,
    state: SolverState,
    n_params: int,
    retrace_as_sgd: bool = False,
) -> StepUpdate:
    """Coefficients of one step at ``learning_rate``; ``step_count`` is the solver's t after it.

    ``state`` holds the arrays named by the solver's ``state_names`` after the update, per
    trainable parameter. With ``retrace_as_sgd`` (or a solver without a linearization) the
    step is treated as plain SGD.
    """
    entry = SOLVERS["Sgd"] if retrace_as_sgd else solver_model(spec.type)
    if entry.linearize is None:
        entry = SOLVERS["Sgd"]
    lr = float(learning_rate)
    step = StepInputs(spec.hyper_parameters, lr, max(int(step_count), 1), state, n_params)
    update = entry.linearize(step)
    if entry.decoupled_decay:
        update.d = lr / initial_learning_rate(spec) * spec.hyper_parameters.get("wd", 0.0)
    return update


def retrace_state_names(spec: SolverSpec) -> List[str]:
    """The solver-state arrays the linearization reads after each update."""
    return list(solver_model(spec.type).state_names)


def warn_if_not_modeled(spec: SolverSpec) -> None:
    if solver_model(spec.type).linearize is None:
        log.warning(
            "solver %s is retraced as plain SGD at its learning rate; scores are approximate",
            spec.type,
        )


# --------------------------------------------------------------------------------------
# Reading, building and scheduling


def read_solver_spec(optimizer, state: Dict[str, Dict[str, np.ndarray]], proto) -> SolverSpec:
    """The :class:`SolverSpec` of an ``optimizer`` message of the ``.nnp``."""
    solver = optimizer.solver
    entry = solver_model(solver.type)
    message = solver_parameters(solver, entry.param_field)
    hyper = {f.name: value for f, value in message.ListFields()}
    hyper.update(
        {
            f.name: f.default_value
            for f in message.DESCRIPTOR.fields
            if f.name not in hyper and isinstance(f.default_value, (int, float))
        }
    )
    config = proto.training_config
    start = int(config.max_epoch) * int(config.iter_per_epoch)
    return SolverSpec(
        type=_ALIASES.get(solver.type, solver.type),
        hyper_parameters={k: v for k, v in hyper.items() if isinstance(v, (int, float))},
        weight_decay=float(solver.weight_decay),
        proto=copy.deepcopy(solver),
        state=state,
        start_iteration=start,
    )


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


def solver_arrays(solver, names: List[str], state_names: List[str]) -> SolverState:
    """The state arrays ``state_names`` of the parameters ``names``, copied out of ``solver``."""
    states = solver.get_states()
    return {
        key: [np.array(states[n].pstate[key].data.get_data("r")) for n in names]
        for key in state_names
    }


def saved_state(solver) -> Dict[str, Dict[str, np.ndarray]]:
    """Every parameter's state arrays and step count "t", as :attr:`SolverSpec.state` holds them."""
    return {
        name: {
            **{key: np.array(value.data.get_data("r")) for key, value in state.pstate.items()},
            "t": np.array(state.t),
        }
        for name, state in solver.get_states().items()
    }


def solver_step_count(solver, names: List[str]) -> int:
    """The solver's own step count t (bias corrections), read from its first parameter."""
    states = solver.get_states()
    return int(states[names[0]].t) if names and names[0] in states else 0


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
