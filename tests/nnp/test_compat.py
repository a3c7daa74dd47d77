"""The version shims of ``compat``: each fallback is forced here, so every nnabla runs it."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import logging
import sys
from pathlib import Path

import nnabla as nn
import nnabla.backward_functions
import nnabla.function
import nnabla.utils.load_function
import numpy as np
import pytest
from model_files import rewrite_nntxt
from nnabla.utils import nnabla_pb2
from plugin_helpers import run_in_process

from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.influence.graphs import (
    GraphCache,
    build_loss_graph,
    layers_without_second_order,
)
from nnabla_sgd_influence.influence.hvp import create_pass
from nnabla_sgd_influence.influence.parameters import ParameterSet
from nnabla_sgd_influence.nnp import compat, solvers
from nnabla_sgd_influence.nnp.model import Layer, load_model

SAMPLE_MODELS = ["digits_cnn", "cancer_mlp", "cancer_logreg", "cancer_mlp_dropout"]


@pytest.fixture
def without_private_factory(monkeypatch):
    """nnabla as if it had dropped ``load_function._create_function_instance``."""
    monkeypatch.delattr(nnabla.utils.load_function, "_create_function_instance")
    compat._nnabla_function_factory.cache_clear()
    yield
    compat._nnabla_function_factory.cache_clear()


def _nnp(samples_dir: Path, name: str) -> Path:
    return samples_dir / "models" / name / "results.nnp"


# --------------------------------------------------------------------------------------
# Versions


def test_version_tuple():
    assert compat.version_tuple("1.39.0") == (1, 39, 0)
    assert compat.version_tuple("1.35.1") == (1, 35, 1)
    assert compat.version_tuple("1.40.0.dev1") == (1, 40, 0)
    assert compat.version_tuple("1.33rc1") == (1, 33)


def test_supported_range_bounds():
    assert compat.nnabla_is_supported((1, 32, 0))
    assert compat.nnabla_is_supported((1, 39, 9))
    assert not compat.nnabla_is_supported((1, 31, 9))
    assert not compat.nnabla_is_supported((1, 40, 0))
    assert compat.nnabla_is_supported()  # the suite runs on a supported nnabla


def test_untested_nnabla_is_named_once(monkeypatch, caplog):
    log = logging.getLogger("test-compat")
    with caplog.at_level(logging.WARNING, logger="test-compat"):
        compat.warn_if_untested_nnabla(log)
        assert not caplog.records
        monkeypatch.setattr(compat, "nnabla_version", lambda: (1, 30, 0))
        compat.warn_if_untested_nnabla(log)
    assert len(caplog.records) == 1
    assert "outside the tested range 1.32.0 to before 1.40" in caplog.text


# --------------------------------------------------------------------------------------
# Building one layer


def _private_factory():
    compat._nnabla_function_factory.cache_clear()
    factory = compat._nnabla_function_factory()
    if factory is None:
        pytest.skip("this nnabla has no private factory to compare with")
    return factory


def _filled(layer_type: str):
    """A layer proto of ``layer_type`` whose every parameter differs from its default."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    proto = nnabla_pb2.Function(type=layer_type, name="x")
    field = compat.parameter_field(layer_type)
    if field is None:
        return proto
    message = getattr(proto, field)
    message.SetInParent()
    for fd in message.DESCRIPTOR.fields:
        if fd.message_type is not None:
            if fd.message_type.name == "Shape":
                getattr(message, fd.name).dim.extend([2, 3])
        elif fd.label == FD.LABEL_REPEATED:
            getattr(message, fd.name).extend(["a"] if fd.type == FD.TYPE_STRING else [1])
        elif fd.type == FD.TYPE_BOOL:
            setattr(message, fd.name, True)
        elif fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            setattr(message, fd.name, 0.5)
        elif fd.type != FD.TYPE_STRING:  # strings are often checked names: keep the default
            setattr(message, fd.name, 2)
    return proto


def _outcome(create, ctx, proto):
    try:
        instance = create(ctx, proto)
    except Exception as error:
        return type(error).__name__
    return instance.name, instance.args


def test_fallback_builds_every_layer_type_as_nnabla_does():
    """For each layer nnabla's own factory knows: same function, same arguments (or error)."""
    factory = _private_factory()
    ctx = nn.get_current_context()
    compared = 0
    for layer_type in sorted(n for n in dir(nnabla.function) if n[:1].isupper()):
        proto = _filled(layer_type)
        expected = _outcome(factory, ctx, proto)
        if expected == "ValueError":  # not a layer type (base classes, helpers)
            continue
        assert _outcome(compat.function_from_parameters, ctx, proto) == expected, layer_type
        compared += 1
    assert compared > 200  # 1.32 has 219 layer types, 1.39 228


def test_parameter_fields_are_unambiguous():
    fields = [f.name for f in nnabla_pb2.Function.DESCRIPTOR.fields if f.name.endswith("_param")]
    assert len(compat._parameter_fields()) == len(fields)
    assert compat.parameter_field("BatchNormalization") == "batch_normalization_param"
    assert compat.parameter_field("ReLU") == "relu_param"
    assert compat.parameter_field("Sigmoid") is None  # no arguments


def test_fallback_rejects_unknown_layers(without_private_factory):
    proto = nnabla_pb2.Function(type="NoSuchLayer")
    with pytest.raises(ValueError, match="NoSuchLayer"):
        compat.create_function_instance(nn.get_current_context(), proto)


@pytest.mark.parametrize("name", SAMPLE_MODELS)
def test_sample_layers_get_the_same_arguments_either_way(samples_dir, name):
    model = load_model(_nnp(samples_dir, name))
    factory = _private_factory()
    ctx = nn.get_current_context()
    network = next(n for n in model.proto.network if n.name == model.train_network)
    for function in network.function:
        assert _outcome(compat.function_from_parameters, ctx, function) == _outcome(
            factory, ctx, function
        ), function.name


def test_real_nnc_layers_get_the_same_arguments_either_way(nnc_fixture):
    model = load_model(nnc_fixture)
    factory = _private_factory()
    ctx = nn.get_current_context()
    for network in model.proto.network:
        for function in network.function:
            assert _outcome(compat.function_from_parameters, ctx, function) == _outcome(
                factory, ctx, function
            ), function.name


def _losses(model, training: bool) -> np.ndarray:
    params = ParameterSet(model)
    graph = build_loss_graph(model, params, 6, training=training)
    rng = np.random.RandomState(0)
    for data in model.data_variables:
        if data.n_classes:
            value = rng.randint(0, data.n_classes, (6,) + data.shape)
        elif data.binary_target:
            value = rng.randint(0, 2, (6,) + data.shape)
        else:
            value = rng.rand(6, *data.shape)
        graph.inputs[data.variable_name].d = value
    graph.per_sample_loss.forward()
    return graph.per_sample_loss.d.copy()


@pytest.mark.parametrize("name", ["digits_cnn", "cancer_mlp"])
def test_graphs_built_by_the_fallback_compute_the_same_losses(samples_dir, name, monkeypatch):
    model = load_model(_nnp(samples_dir, name))
    expected = [_losses(model, True), _losses(model, False)]
    monkeypatch.delattr(nnabla.utils.load_function, "_create_function_instance")
    compat._nnabla_function_factory.cache_clear()
    try:
        assert compat._nnabla_function_factory() is None
        np.testing.assert_array_equal(_losses(model, True), expected[0])
        np.testing.assert_array_equal(_losses(model, False), expected[1])
    finally:
        compat._nnabla_function_factory.cache_clear()


# --------------------------------------------------------------------------------------
# Second-order suspects


def _with_mean_subtraction(samples_dir):
    """digits_cnn with one more layer that nnabla 1.32-1.39 cannot differentiate twice."""
    model = load_model(_nnp(samples_dir, "digits_cnn"))
    return dataclasses.replace(model, layers=model.layers + [Layer("MS", "MeanSubtraction")])


def test_registry_names_layers_without_second_order(samples_dir):
    registry = compat.backward_function_registry()
    assert registry is not None and "Affine" in registry
    model = _with_mean_subtraction(samples_dir)
    assert layers_without_second_order(model) == [Layer("MS", "MeanSubtraction")]


def test_without_registry_no_layer_is_suspected(samples_dir, monkeypatch):
    monkeypatch.delattr(nnabla.backward_functions, "registry")
    assert compat.backward_function_registry() is None
    assert layers_without_second_order(_with_mean_subtraction(samples_dir)) == []
    model = load_model(_nnp(samples_dir, "digits_cnn"))
    graphs = GraphCache(model, ParameterSet(model))
    assert create_pass(graphs, "auto").name == "autodiff"  # the trial pass decides


# --------------------------------------------------------------------------------------
# Solvers and fields a release does not know


def test_lion_loads_where_nnabla_has_it_and_is_explained_where_not(samples_dir, tmp_path):
    def to_lion(text: str) -> str:
        start = text.index("    sgd_param {")
        end = text.index("}", start) + 1
        lion = "    lion_param {\n      lr: 0.001\n      beta1: 0.9\n      beta2: 0.99\n    }"
        return text[:start].replace('type: "Sgd"', 'type: "Lion"') + lion + text[end:]

    path = rewrite_nntxt(_nnp(samples_dir, "cancer_mlp"), tmp_path / "lion.nnp", to_lion)
    if compat.nnabla_version() >= compat.SOLVER_SINCE["Lion"]:
        model = load_model(path)
        assert model.solver.type == "Lion"
        assert model.solver.hyper_parameters["beta2"] == pytest.approx(0.99)
    else:
        with pytest.raises(InfluenceError, match=r"solver 'Lion' needs nnabla 1\.35\.0 or newer"):
            load_model(path)


def test_solver_field_missing_from_this_nnabla(samples_dir, monkeypatch):
    future = dataclasses.replace(solvers.SOLVERS["Sgd"], param_field="sgd_param_of_the_future")
    monkeypatch.setitem(solvers.SOLVERS, "Sgd", future)
    with pytest.raises(InfluenceError, match=r"solver 'Sgd' is not available in nnabla \d"):
        load_model(_nnp(samples_dir, "cancer_mlp"))
    solver = nnabla_pb2.Solver(type="Lion")
    with pytest.raises(InfluenceError, match=r"needs nnabla 1\.35\.0 or newer"):
        compat.solver_parameters(solver, "lion_param_of_the_future")


def test_unknown_field_is_explained(samples_dir, tmp_path):
    def add_field(text: str) -> str:
        return text.replace("    sgd_param {", "    sgd_param {\n      future_knob: 1", 1)

    path = rewrite_nntxt(_nnp(samples_dir, "cancer_mlp"), tmp_path / "new.nnp", add_field)
    with pytest.raises(InfluenceError, match="may come from a newer nnabla than nnabla 1"):
        load_model(path)
    assert compat.unknown_field_hint(ValueError("no field here")) == ""


# --------------------------------------------------------------------------------------
# Array access, imports, Pillow


def test_missing_extension_modules_are_remembered(monkeypatch):
    for name in ("nnabla.nnabla", "nnabla.nnabla_ext"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    compat.skip_missing_extension_lookup()
    assert sys.modules["nnabla.nnabla"] is None
    with pytest.raises(ImportError):
        importlib.import_module("nnabla.nnabla_ext")


def test_existing_extension_modules_are_left_alone(monkeypatch):
    for name in ("nnabla.nnabla", "nnabla.nnabla_ext"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    compat.skip_missing_extension_lookup()
    assert "nnabla.nnabla" not in sys.modules and "nnabla.nnabla_ext" not in sys.modules


NUMPY_TOO_NEW = AttributeError("module 'numpy' has no attribute 'bool'.")  # 1.32, numpy 1.24+
NUMPY_TOO_OLD = ImportError("numpy.core.multiarray failed to import")  # 1.32, numpy 1.22
NUMPY_2 = ValueError("numpy.dtype size changed, may indicate binary incompatibility. Expected 96")


def _import_fails(monkeypatch, error):
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "nnabla":
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("error", [NUMPY_TOO_NEW, NUMPY_TOO_OLD, NUMPY_2])
def test_numpy_that_does_not_fit_nnabla_is_explained(monkeypatch, error):
    from importlib import metadata

    fits = compat.NUMPY_FOR_NNABLA[compat.nnabla_version()[:2]]
    _import_fails(monkeypatch, error)
    with pytest.raises(InfluenceError) as raised:
        compat.import_nnabla()
    message = str(raised.value)
    assert message.startswith(f"nnabla {metadata.version('nnabla')} cannot be imported with numpy")
    assert message.endswith(f'pip install "numpy~={fits}"')


def test_missing_nnabla_is_not_explained_as_numpy(monkeypatch):
    _import_fails(monkeypatch, ModuleNotFoundError("No module named 'nnabla'", name="nnabla"))
    with pytest.raises(ModuleNotFoundError):
        compat.import_nnabla()


def test_every_supported_release_has_its_numpy():
    low, high = compat.NNABLA_RANGE
    assert set(compat.NUMPY_FOR_NNABLA) == {(1, minor) for minor in range(low[1], high[1])}


def test_other_import_errors_pass_through(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "nnabla":
            raise AttributeError("something else")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(AttributeError, match="something else"):
        compat.import_nnabla()


def test_plugin_explains_a_numpy_that_does_not_fit(monkeypatch, tmp_path):
    _import_fails(monkeypatch, NUMPY_TOO_NEW)
    run = run_in_process("tabular", "-t", tmp_path / "t.csv", "-v", tmp_path / "v.csv")
    assert run.returncode == 1
    assert 'pip install "numpy~=' in run.stderr


def test_sixteen_bit_png_as_older_pillow_opens_it(tmp_path):
    from PIL import Image

    wide = np.array([[0, 257, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    as_before_10_3 = Image.fromarray(wide.astype(np.int32))
    as_before_10_3.format = "PNG"
    converted = compat.sixteen_bit_png(as_before_10_3)
    assert converted.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(converted), wide)
    with Image.open(tmp_path / "w.png") as opened:
        assert opened.mode in ("I", "I;16")
        again = compat.sixteen_bit_png(opened)
        assert again is None if opened.mode == "I;16" else again.mode == "I;16"
    tiff = Image.fromarray(wide.astype(np.int32))  # 32-bit: not a PNG, left alone
    tiff.format = "TIFF"
    assert compat.sixteen_bit_png(tiff) is None


def test_bilinear_filter_on_old_and_new_pillow(monkeypatch):
    from PIL import Image

    new = compat.bilinear_resample()
    assert new == Image.BILINEAR
    if hasattr(Image, "Resampling"):
        assert new is Image.Resampling.BILINEAR
        monkeypatch.delattr(Image, "Resampling")  # Pillow before 9.1
    assert compat.bilinear_resample() == Image.BILINEAR
