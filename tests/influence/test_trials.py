"""SGD-Influence trials (retraining, passes, retrace) against independent references.

Closed forms (logistic regression), the per-row loop the batched pass replaces, exactness for
one SGD step of a linear objective, and leave-one-out retraining (Kendall's tau, Jaccard).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from model_files import MIDDLE_LAYERS, ArrayDataset, write_tiny_model

from nnabla_sgd_influence.arguments import InfluenceArguments
from nnabla_sgd_influence.data.datasets import load_dataset
from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.evaluation.ground_truth import LeaveOneOut
from nnabla_sgd_influence.evaluation.metrics import kendall_tau
from nnabla_sgd_influence.influence.graphs import GraphCache
from nnabla_sgd_influence.influence.hvp import (
    AutodiffPass,
    FiniteDifferencePass,
    create_pass,
    per_row_reference,
)
from nnabla_sgd_influence.influence.parameters import ParameterSet
from nnabla_sgd_influence.influence.retrace import retrace
from nnabla_sgd_influence.influence.training import retrain
from nnabla_sgd_influence.influence.trials import run_trial
from nnabla_sgd_influence.nnp.model import load_model


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _graphs(model) -> GraphCache:
    return GraphCache(model, ParameterSet(model))


def _load(samples_dir: Path, model: str, data: str, train_csv: str = "train.csv"):
    m = load_model(samples_dir / "models" / model / "results.nnp")
    folder = samples_dir / data
    train = load_dataset(folder / train_csv, m.data_variables, m.normalize_images)
    val = load_dataset(folder / "val.csv", m.data_variables, m.normalize_images, role="input-val")
    return m, train, val


def _random_direction(params, names, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randn(*params[n].shape).astype(np.float32) for n in names]


# --------------------------------------------------------------------------------------
# One pass: closed forms and the per-row loop


def test_logistic_regression_pass_matches_closed_form(samples_dir):
    m, train, _ = _load(samples_dir, "cancer_logreg", "cancer")
    graphs = _graphs(m)
    params = graphs.params
    rows = np.arange(40)
    batch = train.batch(rows)
    v = _random_direction(params, m.trainable)
    dots, hv = AutodiffPass(graphs)(batch, v)

    # l_i = BCE(sigmoid(w.x + b), y): g_i = (s - y) [x; 1], H_i = s (1 - s) [x; 1][x; 1]^T
    names = dict(zip(m.trainable, range(len(m.trainable))))
    w_name = next(n for n in m.trainable if n.endswith("/W"))
    b_name = next(n for n in m.trainable if n.endswith("/b"))
    w = params[w_name].d.astype(np.float64).ravel()
    b = float(params[b_name].d.ravel()[0])
    x = batch["Input"].astype(np.float64)
    y = batch[m.data_variables[1].variable_name].astype(np.float64).ravel()
    s = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    vw = v[names[w_name]].astype(np.float64).ravel()
    vb = float(v[names[b_name]].ravel()[0])
    along_v = x @ vw + vb
    np.testing.assert_allclose(dots, (s - y) * along_v, rtol=1e-4, atol=1e-6)
    curvature = s * (1.0 - s) * along_v
    np.testing.assert_allclose(hv[names[w_name]].ravel(), x.T @ curvature, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hv[names[b_name]].ravel(), [curvature.sum()], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "model, data", [("cancer_mlp", "cancer"), ("digits_cnn", "digits"), ("cancer_logreg", "cancer")]
)
def test_batched_pass_equals_per_row_loop(samples_dir, model, data):
    m, train, _ = _load(samples_dir, model, data)
    graphs = _graphs(m)
    batch = train.batch(np.arange(3, 19))
    v = _random_direction(graphs.params, m.trainable, seed=1)
    dots, hv = AutodiffPass(graphs)(batch, v)
    ref_dots, ref_hv = per_row_reference(graphs, batch, v)
    np.testing.assert_allclose(dots, ref_dots, rtol=1e-4, atol=1e-6 * np.abs(ref_dots).max())
    scale = np.abs(flat(ref_hv)).max()
    np.testing.assert_allclose(flat(hv), flat(ref_hv), rtol=1e-4, atol=1e-5 * scale)


def test_finite_difference_pass_agrees_with_autodiff(samples_dir):
    m, train, _ = _load(samples_dir, "cancer_mlp", "cancer")
    graphs = _graphs(m)
    batch = train.batch(np.arange(32))
    v = _random_direction(graphs.params, m.trainable, seed=2)
    dots, hv = AutodiffPass(graphs)(batch, v)
    fd_dots, fd_hv = FiniteDifferencePass(graphs)(batch, v)
    np.testing.assert_allclose(fd_dots, dots, rtol=2e-2, atol=2e-3 * np.abs(dots).max())
    np.testing.assert_allclose(flat(fd_hv), flat(hv), rtol=5e-2, atol=2e-2 * np.abs(flat(hv)).max())


# --------------------------------------------------------------------------------------
# The retrace


def test_one_sgd_step_is_exact_for_a_linear_objective(samples_dir, tmp_path):
    """After one step, theta without row j differs by exactly lr/|S| g_j(theta_0)."""
    m, train, _ = _load(samples_dir, "cancer_mlp", "cancer")
    # A large step keeps the float32 change of theta well above rounding.
    solver = dataclasses.replace(m.solver, hyper_parameters={"lr": 50.0})
    m = dataclasses.replace(m, solver=solver)
    train = train.subset(np.arange(24))
    graphs = _graphs(m)
    params = graphs.params
    run = retrain(graphs, m.solver, train, batch_size=24, seed=0, mode="exact", workdir=tmp_path)
    assert len(run.steps) == 1
    u = _random_direction(params, m.trainable, seed=3)
    u = [a.astype(np.float64) for a in u]
    scores = retrace(params, m.solver, train, run, u, AutodiffPass(graphs))

    truth = LeaveOneOut(m, train, train, batch_size=24, seed=0, epochs=1)
    objective = []
    for j in [None] + list(range(len(train))):
        truth.validation_loss(j)
        theta = flat([truth.params[n].d.astype(np.float64) for n in m.trainable])
        objective.append(float(theta @ flat(u).astype(np.float64)))
    exact = np.array(objective[1:]) - objective[0]
    np.testing.assert_allclose(scores, exact, rtol=1e-3, atol=1e-4 * np.abs(exact).max())


def test_retrace_leaves_parameters_and_batch_statistics_unchanged(samples_dir, tmp_path):
    m, train, val = _load(samples_dir, "digits_cnn", "digits")
    train = train.subset(np.arange(64))
    graphs = _graphs(m)
    params = graphs.params
    run = retrain(graphs, m.solver, train, batch_size=32, seed=0, epochs=1)
    after_training = {k: v.d.copy() for k, v in params.variables.items()}
    u = _random_direction(params, m.trainable)
    retrace(params, m.solver, train, run, u, AutodiffPass(graphs))
    for name, value in after_training.items():
        np.testing.assert_array_equal(params[name].d, value, err_msg=name)
    assert any("mean" in n for n in m.parameters) and not any("mean" in n for n in m.trainable)
    for name, value in m.parameters.items():  # the loaded model is never written
        np.testing.assert_array_equal(value, load_model(m.path).parameters[name])


def test_exact_mode_streams_one_snapshot_per_step(samples_dir, tmp_path):
    m, train, val = _load(samples_dir, "cancer_mlp", "cancer")
    exact = InfluenceArguments(batch_size=32, mode="exact")
    result = run_trial(m, train, val, exact, workdir=tmp_path)
    files = sorted((tmp_path / "snapshots-0").glob("*.npy"))
    assert len(files) == len(result.steps) == int(np.ceil(len(train) / 32))
    assert result.stored_bytes == sum(f.stat().st_size for f in files)
    last = run_trial(m, train, val, InfluenceArguments(batch_size=32), workdir=tmp_path)
    assert last.stored_bytes < result.stored_bytes / 5


def test_trials_are_deterministic_and_seed_dependent(samples_dir, tmp_path):
    m, train, val = _load(samples_dir, "cancer_mlp", "cancer")
    a = run_trial(m, train, val, InfluenceArguments(batch_size=32, seed=4))
    b = run_trial(m, train, val, InfluenceArguments(batch_size=32, seed=4))
    c = run_trial(m, train, val, InfluenceArguments(batch_size=32, seed=4), trial=1)
    assert c.seed == 5
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)
    assert sorted(np.concatenate([s.rows for s in a.steps]).tolist()) == list(range(len(train)))


@pytest.mark.parametrize("model", ["cancer_mlp", "cancer_logreg"])
def test_finite_difference_ranking_agrees_with_autodiff(samples_dir, tmp_path, model):
    """On smooth networks (tanh, sigmoid); see the README for ReLU/max-pooling networks."""
    data = "cancer"
    m, train, val = _load(samples_dir, model, data)
    train = train.subset(np.arange(256))
    runs = {
        method: run_trial(m, train, val, InfluenceArguments(batch_size=32, hvp=method))
        for method in ("autodiff", "finite-difference")
    }
    assert runs["finite-difference"].hvp_method == "finite-difference"
    tau = kendall_tau(runs["finite-difference"].scores, runs["autodiff"].scores)
    assert tau >= 0.95


def test_depthwise_convolution_is_differentiated_twice_as_grouped_convolution(tmp_path):
    path = tmp_path / "results.nnp"
    write_tiny_model(path, MIDDLE_LAYERS["DepthwiseConvolution"])
    m = load_model(path)
    assert [layer.type for layer in m.layers][0] == "DepthwiseConvolution"
    graphs = _graphs(m)
    step_pass = create_pass(graphs, "auto")
    assert isinstance(step_pass, AutodiffPass)
    train, val = ArrayDataset(40, 0), ArrayDataset(12, 1)
    batch = train.batch(np.arange(8))
    v = _random_direction(graphs.params, m.trainable, seed=4)
    dots, hv = step_pass(batch, v)
    ref_dots, ref_hv = per_row_reference(graphs, batch, v)
    np.testing.assert_allclose(dots, ref_dots, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(flat(hv), flat(ref_hv), rtol=1e-4, atol=1e-5)
    exact = InfluenceArguments(batch_size=8, mode="exact")
    result = run_trial(m, train, val, exact, workdir=tmp_path)
    truth = LeaveOneOut(m, train, val, batch_size=8, seed=0, epochs=1).changes()
    assert kendall_tau(result.scores, truth) >= 0.95


def test_layer_without_second_order_falls_back_to_finite_differences(tmp_path, caplog):
    path = tmp_path / "results.nnp"
    write_tiny_model(path, MIDDLE_LAYERS["Flip"])
    m = load_model(path)
    train, val = ArrayDataset(40, 0), ArrayDataset(12, 1)
    with caplog.at_level("WARNING"):
        result = run_trial(m, train, val, InfluenceArguments(batch_size=8, mode="exact"))
    assert result.hvp_method == "finite-difference"
    assert "'Mirror' (Flip)" in caplog.text
    truth = LeaveOneOut(m, train, val, batch_size=8, seed=0, epochs=1).changes()
    assert kendall_tau(result.scores, truth) >= 0.95
    with pytest.raises(InfluenceError, match="'Mirror' \\(Flip\\) has no second-order"):
        run_trial(m, train, val, InfluenceArguments(batch_size=8, hvp="autodiff"))


def test_a_batch_of_one_row_with_batch_normalization_is_warned_about(samples_dir, caplog):
    from nnabla_sgd_influence.influence.trials import warn_about_batches_of_one

    cnn = load_model(samples_dir / "models" / "digits_cnn" / "results.nnp")
    mlp = load_model(samples_dir / "models" / "cancer_mlp" / "results.nnp")
    with caplog.at_level("WARNING"):
        warn_about_batches_of_one(cnn, 1000, 32)  # no batch of one
        warn_about_batches_of_one(mlp, 33, 32)  # no BatchNormalization
        assert caplog.text == ""
        warn_about_batches_of_one(cnn, 33, 32)
    assert "one row while the model has BatchNormalization" in caplog.text
