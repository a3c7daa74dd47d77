"""Reading NNC ``.nnp`` files: the real NNC model, the samples, and files that must be refused."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from model_files import rewrite_nntxt

from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.influence.graphs import build_loss_graph, layers_without_second_order
from nnabla_sgd_influence.influence.parameters import ParameterSet
from nnabla_sgd_influence.nnp.model import load_model
from nnabla_sgd_influence.nnp.solvers import create_solver, learning_rate_schedule


def _stored_parameters(nnp: Path) -> dict:
    import io

    with zipfile.ZipFile(nnp) as archive, h5py.File(io.BytesIO(archive.read("parameter.h5"))) as h5:
        found = {}
        h5.visititems(
            lambda k, o: found.update({k: o[()]}) if isinstance(o, h5py.Dataset) else None
        )
        return found


def test_real_nnc_model_is_described_correctly(nnc_fixture):
    model = load_model(nnc_fixture)
    assert model.train_network == "Main"
    assert model.eval_network == "MainValidation"
    assert [(d.variable_name, d.data_name, d.shape) for d in model.data_variables] == [
        ("Input", "x", (1, 28, 28)),
        ("CategoricalCrossEntropy_T", "y", (1,)),
    ]
    assert model.data_variables[1].n_classes == 10
    assert model.loss_variables == ["CategoricalCrossEntropy"]
    assert model.solver.type == "Adam"
    h = model.solver.hyper_parameters
    assert h["alpha"] == pytest.approx(0.001)
    assert (h["beta1"], h["beta2"]) == (pytest.approx(0.9), pytest.approx(0.999))
    assert h["eps"] == pytest.approx(1e-8)
    assert model.solver.start_iteration == 10 * 937
    shapes = {name: model.parameters[name].shape for name in model.trainable}
    assert shapes == {
        "Convolution/conv/W": (16, 1, 7, 7),
        "Convolution/conv/b": (16,),
        "Convolution_2/conv/W": (30, 16, 3, 3),
        "Convolution_2/conv/b": (30,),
        "Affine/affine/W": (480, 150),
        "Affine/affine/b": (150,),
        "Affine_2/affine/W": (150, 10),
        "Affine_2/affine/b": (10,),
    }
    assert model.n_trainable == sum(int(np.prod(s)) for s in shapes.values()) == 78_810
    # NNC's saved Adam state is read, so retraining continues where NNC stopped.
    assert set(model.solver.state) == set(model.trainable)
    assert int(model.solver.state["Affine/affine/W"]["t"]) > 0
    assert model.normalize_images
    assert layers_without_second_order(model) == []


def test_real_nnc_model_gives_one_loss_per_row(nnc_fixture):
    model = load_model(nnc_fixture)
    params = ParameterSet(model)
    rng = np.random.RandomState(0)
    images = rng.rand(7, 1, 28, 28).astype(np.float32)
    labels = rng.randint(0, 10, (7, 1))
    for training in (True, False):
        graph = build_loss_graph(model, params, 7, training=training)
        graph.inputs["Input"].d = images
        graph.inputs["CategoricalCrossEntropy_T"].d = labels
        graph.per_sample_loss.forward()
        assert graph.per_sample_loss.shape == (7,)
        probabilities = graph.outputs["Softmax"].d
        expected = -np.log(probabilities[np.arange(7), labels.ravel()])
        np.testing.assert_allclose(graph.per_sample_loss.d, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["digits_cnn", "cancer_mlp", "cancer_logreg", "cancer_mlp_dropout"]
)
def test_building_graphs_never_changes_stored_parameters(samples_dir, name):
    path = samples_dir / "models" / name / "results.nnp"
    model = load_model(path)
    params = ParameterSet(model)
    for batch_size, training in [(1, True), (5, False), (64, True), (3, False)]:
        build_loss_graph(model, params, batch_size, training=training)
    stored = _stored_parameters(path)
    assert set(stored) == set(model.parameters)
    for key, value in stored.items():
        np.testing.assert_array_equal(params[key].d, value, err_msg=key)
        np.testing.assert_array_equal(model.parameters[key], value, err_msg=key)


def test_batch_norm_statistics_are_not_trained(samples_dir):
    model = load_model(samples_dir / "models" / "digits_cnn" / "results.nnp")
    bn = [n for n in model.parameters if n.startswith("BatchNormalization")]
    assert {n.rsplit("/", 1)[1] for n in bn} == {"beta", "gamma", "mean", "var"}
    assert not any(n.endswith(("/mean", "/var")) for n in model.trainable)
    assert any(n.endswith("/gamma") for n in model.trainable)


def test_evaluation_mode_uses_running_statistics_and_skips_dropout(samples_dir):
    model = load_model(samples_dir / "models" / "cancer_mlp_dropout" / "results.nnp")
    assert [layer.name for layer in model.layers_of_type("Dropout")]
    model = dataclasses.replace(model, eval_network=model.train_network)  # no monitor network
    params = ParameterSet(model)
    x = np.random.RandomState(1).randn(8, 30).astype(np.float32)
    results = []
    for _ in range(2):
        graph = build_loss_graph(model, params, 8, training=False)
        graph.inputs["Input"].d = x
        graph.inputs[model.data_variables[1].variable_name].d = np.zeros((8, 1))
        graph.per_sample_loss.forward()
        results.append(graph.per_sample_loss.d.copy())
    np.testing.assert_array_equal(results[0], results[1])


def test_sample_solver_and_schedule(samples_dir):
    model = load_model(samples_dir / "models" / "cancer_mlp" / "results.nnp")
    assert model.solver.type == "Sgd"
    schedule = learning_rate_schedule(model.solver)
    assert schedule(0) == pytest.approx(model.solver.hyper_parameters["lr"])
    params = ParameterSet(model)
    solver = create_solver(model.solver, {n: params[n] for n in model.trainable})
    assert solver.learning_rate() == pytest.approx(model.solver.hyper_parameters["lr"])


# --------------------------------------------------------------------------------------
# Files that must be refused with one clear line


def _drop_section(text: str, name: str) -> str:
    lines, out, depth, skipping = text.splitlines(), [], 0, False
    for line in lines:
        if not skipping and line.startswith(name + " {"):
            skipping, depth = True, 0
        if skipping:
            depth += line.count("{") - line.count("}")
            if depth == 0:
                skipping = False
            continue
        out.append(line)
    return "\n".join(out)


def test_missing_model(tmp_path):
    with pytest.raises(InfluenceError, match="model file not found: .*nope.nnp"):
        load_model(tmp_path / "nope.nnp")


def test_model_that_is_not_a_zip(tmp_path):
    path = tmp_path / "results.nnp"
    path.write_text("hello")
    with pytest.raises(InfluenceError, match="results.nnp is not a .nnp file"):
        load_model(path)


def test_zip_without_network(tmp_path):
    path = tmp_path / "results.nnp"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(InfluenceError, match="holds no network definition"):
        load_model(path)


def test_model_without_optimizer(samples_dir, tmp_path):
    source = samples_dir / "models" / "cancer_mlp" / "results.nnp"
    path = rewrite_nntxt(source, tmp_path / "r.nnp", lambda t: _drop_section(t, "optimizer"))
    with pytest.raises(InfluenceError, match="has no optimizer section"):
        load_model(path)


def test_model_without_loss(samples_dir, tmp_path):
    source = samples_dir / "models" / "cancer_mlp" / "results.nnp"

    def drop_loss(text: str) -> str:
        start = text.index("  loss_variable {")
        return text[:start] + text[text.index("}", start) + 2 :]

    path = rewrite_nntxt(source, tmp_path / "r.nnp", drop_loss)
    with pytest.raises(InfluenceError, match="names no loss variable"):
        load_model(path)


def test_model_with_garbled_definition(samples_dir, tmp_path):
    source = samples_dir / "models" / "cancer_mlp" / "results.nnp"
    path = rewrite_nntxt(source, tmp_path / "r.nnp", lambda t: t + "\nnetwork { name: ")
    with pytest.raises(
        InfluenceError, match="member .net.nntxt. is not a valid network definition"
    ):
        load_model(path)
