"""Batches of one row: the second-order pass for the four classification losses.

nnabla's own second-order backward of CategoricalCrossEntropy and SoftmaxCrossEntropy drops an
axis of size 1, the batch axis included (see ``second_order/equivalents.py``); these layers are
rewritten in second-order graphs. Checked against nnabla's layers, its first-order gradient,
the per-row reference, nnabla's own second-order backward where it works, and leave-one-out
retraining.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from nnabla_sgd_influence.arguments import InfluenceArguments
from nnabla_sgd_influence.data.datasets import load_dataset
from nnabla_sgd_influence.evaluation.ground_truth import LeaveOneOut
from nnabla_sgd_influence.evaluation.metrics import kendall_tau
from nnabla_sgd_influence.influence import graphs as graphs_module
from nnabla_sgd_influence.influence import second_order
from nnabla_sgd_influence.influence.graphs import GraphCache
from nnabla_sgd_influence.influence.hvp import AutodiffPass, per_row_reference
from nnabla_sgd_influence.influence.parameters import ParameterSet
from nnabla_sgd_influence.influence.second_order import equivalents
from nnabla_sgd_influence.influence.training import batch_order
from nnabla_sgd_influence.influence.trials import run_trial
from nnabla_sgd_influence.nnp.model import load_model

LOSS_LAYERS = ("CategoricalCrossEntropy", "SoftmaxCrossEntropy")


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _graphs(model) -> GraphCache:
    return GraphCache(model, ParameterSet(model))


LOSSES = [
    "CategoricalCrossEntropy",
    "SoftmaxCrossEntropy",
    "BinaryCrossEntropy",
    "SigmoidCrossEntropy",
]


def _fused(model, loss: str, activation: str, fused: str):
    """``model`` with ``activation`` + ``loss`` replaced by the fused layer ``fused``."""
    proto = copy.deepcopy(model.proto)
    for network in proto.network:
        producers = {f.output[0]: f for f in network.function}
        for function in network.function:
            if function.type == loss:
                producer = producers[function.input[0]]
                assert producer.type == activation
                function.input[0] = producer.input[0]
                function.type = fused
                if loss == "CategoricalCrossEntropy":
                    function.ClearField("categorical_cross_entropy_param")
                    function.softmax_cross_entropy_param.axis = 1
    return dataclasses.replace(model, proto=proto)


@pytest.fixture(scope="module")
def problems(samples_dir):
    """{loss: (model, train, val)} on the cancer samples."""
    mlp = load_model(samples_dir / "models" / "cancer_mlp" / "results.nnp")
    logreg = load_model(samples_dir / "models" / "cancer_logreg" / "results.nnp")
    models = {
        "CategoricalCrossEntropy": mlp,
        "SoftmaxCrossEntropy": _fused(
            mlp, "CategoricalCrossEntropy", "Softmax", "SoftmaxCrossEntropy"
        ),
        "BinaryCrossEntropy": logreg,
        "SigmoidCrossEntropy": _fused(
            logreg, "BinaryCrossEntropy", "Sigmoid", "SigmoidCrossEntropy"
        ),
    }
    folder = samples_dir / "cancer"
    result = {}
    for loss, model in models.items():
        assert loss in {f.type for n in model.proto.network for f in n.function}
        train = load_dataset(folder / "train.csv", model.data_variables)
        val = load_dataset(folder / "val.csv", model.data_variables, role="input-val")
        result[loss] = (model, train, val)
    return result


def _direction(model, params, seed=1):
    rng = np.random.RandomState(seed)
    return [rng.randn(*params[n].shape).astype(np.float32) for n in model.trainable]


def _native_gradient(graphs, batch):
    """sum_i g_i from nnabla's first-order (C++) backward of the training graph."""
    graph = graphs.loss(len(next(iter(batch.values()))), training=True)
    graph.feed(batch)
    graph.sum_loss.forward()
    graphs.params.zero_grad()
    graph.sum_loss.backward()
    return graphs.params.gradients()


# --------------------------------------------------------------------------------------
# The rewritten layers


@pytest.mark.parametrize(
    "shape, axis",
    [((1, 5), 1), ((7, 5), 1), ((3, 5, 1, 1), 1), ((2, 1, 3, 4), 3), ((2, 3, 4), -2)],
)
def test_rewritten_losses_equal_nnabla_layers(shape, axis):
    import nnabla as nn
    import nnabla.functions as F

    rng = np.random.RandomState(0)
    x = nn.Variable.from_numpy_array(rng.rand(*shape).astype(np.float32))
    target_shape = list(shape)
    target_shape[axis] = 1
    t = nn.Variable.from_numpy_array(
        rng.randint(0, shape[axis], size=target_shape).astype(np.float32)
    )
    pairs = [
        (F.categorical_cross_entropy(x, t, axis=axis), equivalents.categorical_cross_entropy),
        (F.softmax_cross_entropy(x, t, axis=axis), equivalents.softmax_cross_entropy),
    ]
    for native, rewritten in pairs:
        ours = rewritten(x, t, axis)
        native.forward()
        ours.forward()
        assert ours.shape == native.shape
        np.testing.assert_allclose(ours.d, native.d, rtol=1e-6)


def test_categorical_cross_entropy_keeps_nnabla_clamp():
    import nnabla as nn
    import nnabla.functions as F

    x = nn.Variable.from_numpy_array(np.array([[0.0, 1.0]], np.float32))
    t = nn.Variable.from_numpy_array(np.array([[0.0]], np.float32))
    native = F.categorical_cross_entropy(x, t, axis=1)
    ours = equivalents.categorical_cross_entropy(x, t, 1)
    native.forward()
    ours.forward()
    assert np.isfinite(ours.d).all()
    np.testing.assert_array_equal(ours.d, native.d)


def test_mask_refuses_a_target_of_another_shape():
    import nnabla as nn

    with pytest.raises(ValueError, match="does not fit"):
        equivalents.one_hot_mask(nn.Variable((4, 3)), nn.Variable((4, 2)), 1)


# --------------------------------------------------------------------------------------
# One pass at batch 1


@pytest.mark.parametrize("loss", LOSSES)
def test_batch_of_one_pass_equals_the_references(problems, loss):
    model, train, _ = problems[loss]
    graphs = _graphs(model)
    params = graphs.params
    v = _direction(model, params)
    row = 5
    dots, hv = AutodiffPass(graphs)(train.batch(np.array([row])), v)

    gradient = _native_gradient(graphs, train.batch(np.array([row])))
    native_dot = sum(float(np.sum(g * a)) for g, a in zip(gradient, v))
    np.testing.assert_allclose(dots, [native_dot], rtol=1e-4)

    # No layer mixes rows here, so row 5's H_i v inside 16 rows is its H_i v alone.
    ref_dots, _ = per_row_reference(graphs, train.batch(np.arange(16)), v)
    _, ref_hv = per_row_reference(graphs, train.batch(np.array([row])), v)
    np.testing.assert_allclose(dots, ref_dots[row : row + 1], rtol=1e-4)
    scale = np.abs(flat(ref_hv)).max()
    np.testing.assert_allclose(flat(hv), flat(ref_hv), rtol=1e-4, atol=1e-6 * scale)

    # H_i v against central differences of nnabla's first-order gradient along v.
    theta = [params[n] for n in model.trainable]
    base = [p.d.copy() for p in theta]
    differences = []
    for sign in (1.0, -1.0):
        for p, value, direction in zip(theta, base, v):
            p.d = value + sign * 1e-3 * direction
        differences.append(_native_gradient(graphs, train.batch(np.array([row]))))
    for p, value in zip(theta, base):
        p.d = value
    numeric = [(a - b) / 2e-3 for a, b in zip(*differences)]
    np.testing.assert_allclose(flat(hv), flat(numeric), rtol=0, atol=2e-3 * scale)


@pytest.mark.parametrize("loss", ["CategoricalCrossEntropy", "SoftmaxCrossEntropy"])
def test_rewritten_losses_match_nnabla_second_order_where_it_works(problems, loss, monkeypatch):
    model, train, _ = problems[loss]
    batch = train.batch(np.arange(16))
    v = _direction(model, ParameterSet(model))
    dots, hv = AutodiffPass(_graphs(model))(batch, v)
    native = dict(second_order.SECOND_ORDER_EQUIVALENTS)
    for name in LOSS_LAYERS:
        native.pop(name)
    monkeypatch.setattr(graphs_module, "SECOND_ORDER_EQUIVALENTS", native)
    monkeypatch.setattr(graphs_module, "SATURATING_PAIRS", {})  # Softmax -> loss as built
    native_dots, native_hv = AutodiffPass(_graphs(model))(batch, v)
    # float32 rounding of the log-sum-exp: equal to about 1e-6 of the largest value
    np.testing.assert_allclose(dots, native_dots, atol=1e-5 * np.abs(native_dots).max())
    np.testing.assert_allclose(flat(hv), flat(native_hv), atol=1e-5 * np.abs(flat(native_hv)).max())


def test_batch_of_one_through_batch_normalization(samples_dir):
    """The sample CNN at batch 1 (batch statistics of one row) gives finite values."""
    model = load_model(samples_dir / "models" / "digits_cnn" / "results.nnp")
    train = load_dataset(samples_dir / "digits" / "train.csv", model.data_variables)
    graphs = _graphs(model)
    dots, hv = AutodiffPass(graphs)(train.batch(np.array([3])), _direction(model, graphs.params))
    assert dots.shape == (1,) and np.isfinite(dots).all() and np.isfinite(flat(hv)).all()


# --------------------------------------------------------------------------------------
# Leave-one-out with batches of one row


@pytest.mark.parametrize("mode", ["last", "exact"])
@pytest.mark.parametrize("loss", LOSSES)
def test_last_batch_of_one_row_agrees_with_leave_one_out(problems, tmp_path, loss, mode):
    """33 rows at batch 32: the last step trains on one row."""
    model, train, val = problems[loss]
    rows = train.subset(np.arange(33))
    (single,) = [int(r[0]) for _, r in batch_order(33, 32, 0, 1) if len(r) == 1]
    truth = LeaveOneOut(model, rows, val, batch_size=32, seed=0, epochs=1).changes()
    arguments = InfluenceArguments(batch_size=32, mode=mode)
    estimate = run_trial(model, rows, val, arguments, workdir=Path(tmp_path)).scores
    assert kendall_tau(estimate, truth) >= 0.95  # measured 0.98-1.00
    scale = np.abs(truth).max()
    assert abs(estimate[single] - truth[single]) <= 2e-3 * scale  # measured <= 4e-4


@pytest.mark.parametrize("loss", LOSSES)
def test_every_batch_of_one_row_agrees_with_leave_one_out(problems, tmp_path, loss):
    """Batch size 1 on 12 rows, with a tenth of the sample's step so that one removed step
    stays in the linear regime (the gap shrinks with the step size: it is linearization)."""
    model, train, val = problems[loss]
    hyper = dict(model.solver.hyper_parameters)
    hyper["lr"] *= 0.1
    model = dataclasses.replace(
        model, solver=dataclasses.replace(model.solver, hyper_parameters=hyper)
    )
    rows = train.subset(np.arange(12))
    truth = LeaveOneOut(model, rows, val, batch_size=1, seed=0, epochs=1).changes()
    arguments = InfluenceArguments(batch_size=1, mode="exact")
    estimate = run_trial(model, rows, val, arguments, workdir=Path(tmp_path)).scores
    assert kendall_tau(estimate, truth) >= 0.95  # measured 1.0
    assert np.abs(estimate - truth).max() <= 0.06 * np.abs(truth).max()  # measured 0.018-0.027
