"""The solver linearization: coefficients against nnabla's own update, and against leave-one-out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from influence_reference import Subset

from nnabla_sgd_influence.datasets import load_dataset
from nnabla_sgd_influence.engine import run_trial
from nnabla_sgd_influence.evaluation import LeaveOneOut, kendall_tau
from nnabla_sgd_influence.model import SolverSpec, load_model
from nnabla_sgd_influence.solvers import create_solver, linearize, preconditioner_state_name

ADAM = {"alpha": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
SOLVERS = {
    "Sgd": {"lr": 0.05},
    "Momentum": {"lr": 0.01, "momentum": 0.9},
    "Nesterov": {"lr": 0.01, "momentum": 0.9},
    "SgdW": {"lr": 0.01, "momentum": 0.9, "wd": 1e-2},
    "Adam": ADAM,
    "AdamW": {**ADAM, "wd": 1e-2},
    "AMSGRAD": ADAM,
    "Adamax": {**ADAM, "alpha": 0.002},
    "RMSprop": {"lr": 0.001, "decay": 0.9, "eps": 1e-8},
    "Adagrad": {"lr": 0.01, "eps": 1e-8},
}


def _spec(kind: str, hyper: dict, weight_decay: float = 0.0) -> SolverSpec:
    from nnabla.utils import nnabla_pb2

    return SolverSpec(kind, dict(hyper), weight_decay, nnabla_pb2.Solver(), {}, 0)


@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_linearized_step_matches_nnabla_update(kind):
    """d theta' / d g from two real nnabla updates equals -p * c of the linearization."""
    import nnabla as nn

    spec = _spec(kind, SOLVERS[kind])
    rng = np.random.RandomState(0)
    gradient = rng.randn(6).astype(np.float32)
    delta = np.zeros(6, np.float32)
    delta[2] = 1e-2
    learning_rate, prior_steps = 0.004, 9

    def step(g):
        p = nn.Variable.from_numpy_array(np.zeros(6, np.float32), need_grad=True)
        solver = create_solver(spec, {"w": p})
        p.grad.zero()
        solver.update()  # creates the state, then a fixed history is written over it
        state = solver.get_states()["w"]
        state.t = prior_steps
        for key, value in state.pstate.items():
            # Large second moments make the preconditioner's own change negligible.
            fill = 1e4 if key in ("var", "v", "v_hat", "u") else 0.3
            value.data.copy_from(nn.NdArray.from_numpy_array(np.full(6, fill, np.float32)))
        solver.set_states({"w": state})
        solver.set_learning_rate(learning_rate)
        p.d = np.zeros(6)
        p.grad.copy_from(nn.NdArray.from_numpy_array(g))
        solver.update()
        moment = preconditioner_state_name(spec)
        after = solver.get_states()["w"]
        second = [np.array(after.pstate[moment].data.get_data("r"))] if moment else None
        return p.d.astype(np.float64), after.t, second

    base, t, second = step(gradient)
    moved, _, _ = step(gradient + delta)
    update = linearize(spec, learning_rate, t, second, 1)
    expected = -np.broadcast_to(update.p[0], (6,))[2] * update.c * delta[2]
    assert (moved - base)[2] == pytest.approx(expected, rel=2e-3)


@pytest.fixture(scope="module")
def mlp_problem(samples_dir):
    model = load_model(samples_dir / "models" / "cancer_mlp" / "results.nnp")
    train = load_dataset(samples_dir / "cancer" / "train.csv", model.data_variables)
    val = load_dataset(samples_dir / "cancer" / "val.csv", model.data_variables, role="input-val")
    return model, Subset(train, 200), val


@pytest.mark.parametrize(
    "kind, weight_decay", [(k, 0.0) for k in sorted(SOLVERS)] + [("Sgd", 1e-2), ("Adam", 1e-2)]
)
def test_retrace_of_each_solver_against_leave_one_out(mlp_problem, tmp_path, kind, weight_decay):
    """An MLP trained 3 epochs with ``kind``, then retrained 1 epoch: tau of modeled vs plain."""
    model, train, val = mlp_problem
    spec = _spec(kind, SOLVERS[kind], weight_decay)
    spec = dataclasses.replace(spec, proto=model.solver.proto)
    start = dataclasses.replace(model, solver=spec)
    trained = LeaveOneOut(start, train, val, batch_size=32, seed=7, epochs=3).trained_model()
    truth = LeaveOneOut(trained, train, val, batch_size=64, seed=0, epochs=1).changes()
    taus = {}
    for modeled in (True, False):
        scores = run_trial(
            trained,
            train,
            val,
            batch_size=64,
            seed=0,
            mode="exact",
            workdir=tmp_path,
            model_solver=modeled,
        ).scores
        taus[modeled] = kendall_tau(scores, truth)
    print(f"{kind} wd={weight_decay}: tau {taus[True]:.3f} (as plain SGD {taus[False]:.3f})")
    assert taus[True] >= 0.88
    assert taus[True] >= taus[False] - 0.01
