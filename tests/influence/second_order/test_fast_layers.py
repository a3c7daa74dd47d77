"""The second-order layers of ``second_order/`` against nnabla's own autodiff.

Each hand-made graph is built twice, with nnabla's BatchNormalization / ReLU / MaxPooling and
with this package's, and the three quantities of the batched pass are compared: the batch
gradient G = dL/dtheta, the per-row dots <v, g_i> = ds/dw_i and the Hessian-vector sum
ds/dtheta, for s = <v, G>. The sample models are compared through ``AutodiffPass`` and
``per_row_reference``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest

from nnabla_sgd_influence.data.datasets import load_dataset
from nnabla_sgd_influence.influence import second_order
from nnabla_sgd_influence.influence.graphs import GraphCache
from nnabla_sgd_influence.influence.hvp import AutodiffPass, per_row_reference
from nnabla_sgd_influence.influence.parameters import ParameterSet
from nnabla_sgd_influence.influence.second_order import SecondOrderLayers, masks
from nnabla_sgd_influence.influence.second_order._arrays import FORWARD_NAMES
from nnabla_sgd_influence.nnp.model import load_model


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


# Differences relative to the largest entry; all are float32 rounding. On these graphs nnabla's
# own second order of BatchNormalization is up to ~2e-5 from a float64 computation, this
# package's mostly within 2e-6 (its statistics are nnabla's: up to ~1e-5 off for two rows),
# and on the sample models nnabla's BatchNormalization itself is about 1e-5 off.
LAYER_TOLERANCE = 5e-5
FLOAT64_TOLERANCE = 2e-5
MODEL_TOLERANCE = 1e-4


@pytest.fixture
def any_size(monkeypatch):
    """The hand-made graphs are small: use this package's layers at any size."""
    monkeypatch.setattr(second_order._arrays, "MIN_ELEMENTS", 0)


def _function(layer_type: str, **fields):
    """An nnabla_pb2.Function as a .nnp holds it."""
    from nnabla.utils import nnabla_pb2

    function = nnabla_pb2.Function()
    function.type = layer_type
    function.name = layer_type
    param = {
        "BatchNormalization": "batch_normalization_param",
        "MaxPooling": "max_pooling_param",
        "ReLU": "relu_param",
    }.get(layer_type)
    if param is None:
        return function
    message = getattr(function, param)
    for key, value in fields.items():
        target = getattr(message, key)
        if isinstance(value, (list, tuple)):
            if hasattr(target, "dim"):
                target.dim.extend(value)
            else:
                target.extend(value)
        else:
            setattr(message, key, value)
    if layer_type == "ReLU":
        message.SetInParent()
    return function


def _assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    scale = max(float(np.abs(expected).max()), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)


class _Graph:
    """x = tanh(input * scale) with a trained scale per feature, one layer, then
    loss_i = sum(tanh(h)_i * target_i) weighted by w_i; G = dL/dtheta, s = <v, G>.

    (Scaling alone would be lost in BatchNormalization, and its gradient would be rounding.)
    """

    def __init__(self, layer, fast: bool, shape, parameters, seed: int = 0):
        import nnabla as nn
        import nnabla.functions as F

        rng = np.random.RandomState(seed)
        self.parameters = parameters
        self.inputs = nn.Variable.from_numpy_array(rng.randn(*shape).astype(np.float32) + 0.3)
        scale = parameters["scale"]
        with SecondOrderLayers(enabled=fast) as layers:
            x = F.tanh(self.inputs * scale)
            args = [x] + [parameters[name] for name in layer["inputs"]]
            built = layers.build(layer["function"], args, True)
            if fast and layer["function"].type in FORWARD_NAMES:
                (h,) = built
                assert h.parent.info.type_name == FORWARD_NAMES[layer["function"].type]
            else:
                assert built is None
                h = layer["nnabla"](*args)
            self.target = nn.Variable.from_numpy_array(rng.randn(*h.shape).astype(np.float32))
            per_row = F.sum(F.tanh(h) * self.target, axis=tuple(range(1, h.ndim)))
            self.weights = nn.Variable.from_numpy_array(
                np.ones(shape[0], np.float32), need_grad=True
            )
            total = F.sum(self.weights * per_row)
            self.theta = [p for p in parameters.values() if p.need_grad]
            self.gradients = nn.grad([total], self.theta)
        for g in self.gradients:
            g.persistent = True
        self.directions = [
            nn.Variable.from_numpy_array(rng.randn(*p.shape).astype(np.float32)) for p in self.theta
        ]
        terms = [F.sum(g * d) for g, d in zip(self.gradients, self.directions)]
        self.directional = F.add_n(*terms) if len(terms) > 1 else terms[0]
        self.types = set()
        self.directional.visit(lambda f: self.types.add(f.info.type_name))

    def run(self):
        self.directional.forward(clear_no_need_grad=True)
        gradients = [g.d.copy() for g in self.gradients]
        self.weights.grad.zero()
        for p in self.theta:
            p.grad.zero()
        self.directional.backward(clear_buffer=True)
        return gradients, self.weights.g.copy(), [p.g.copy() for p in self.theta]


def _parameters(
    shape: Sequence[int], channel_shape: Optional[Sequence[int]], beta: bool, gamma: bool, seed=1
):
    """The input's scale per feature, and BatchNormalization's parameters when
    ``channel_shape`` is given."""
    import nnabla as nn

    rng = np.random.RandomState(seed)
    scale = (rng.rand(1, *shape[1:]) + 0.5).astype(np.float32)
    params = {"scale": nn.Variable.from_numpy_array(scale, need_grad=True)}
    if channel_shape is None:
        return params
    if beta:
        params["beta"] = nn.Variable.from_numpy_array(
            rng.randn(*channel_shape).astype(np.float32), need_grad=True
        )
    if gamma:
        params["gamma"] = nn.Variable.from_numpy_array(
            (rng.rand(*channel_shape) + 0.5).astype(np.float32), need_grad=True
        )
    params["mean"] = nn.Variable.from_numpy_array(rng.randn(*channel_shape).astype(np.float32))
    params["var"] = nn.Variable.from_numpy_array(
        (rng.rand(*channel_shape) + 0.5).astype(np.float32)
    )
    return params


def _compare(layer, shape, parameters, tolerance=LAYER_TOLERANCE, reference=None, uses=()) -> None:
    """G, <v, g_i> and sum_i H_i v of both graphs, each relative to its largest entry; and
    this package's against ``reference(graph)`` (float64) when given. ``uses``: function
    types that the package's graph must contain."""
    expected = _Graph(layer, False, shape, parameters).run()
    graph = _Graph(layer, True, shape, parameters)
    assert set(uses) <= graph.types
    actual = graph.run()
    _assert_same_pass(actual, expected, tolerance)
    if reference is not None:
        _assert_same_pass(actual, reference(graph), FLOAT64_TOLERANCE)


def _assert_same_pass(actual, expected, tolerance) -> None:
    _assert_close(flat(actual[0]), flat(expected[0]), tolerance)  # G
    _assert_close(actual[1], expected[1], tolerance)  # <v, g_i>
    _assert_close(flat(actual[2]), flat(expected[2]), tolerance)  # sum_i H_i v


# --------------------------------------------------------------------------------------
# BatchNormalization


def _batch_normalization(axes, eps, beta: bool, gamma: bool):
    import nnabla.functions as F

    function = _function(
        "BatchNormalization",
        axes=list(axes),
        eps=eps,
        decay_rate=0.9,
        batch_stat=True,
        no_bias=not beta,
        no_scale=not gamma,
    )
    names = [n for n, present in (("beta", beta), ("gamma", gamma)) if present] + ["mean", "var"]

    def nnabla_layer(x, *args):
        given = dict(zip(names, args))
        return F.batch_normalization(
            x,
            given.get("beta"),
            given.get("gamma"),
            given["mean"],
            given["var"],
            axes=list(axes),
            eps=eps,
            batch_stat=True,
        )

    return {"function": function, "inputs": names, "nnabla": nnabla_layer}


@pytest.mark.parametrize(
    "beta, gamma", [(True, True), (False, True), (True, False), (False, False)]
)
@pytest.mark.parametrize(
    "shape, axes",
    [
        ((6, 5), [1]),  # Affine output, as NNC writes it
        ((4, 3, 5, 6), [1]),  # Convolution output, as NNC writes it
        ((4, 5, 6, 3), [3]),  # channels last
        ((4, 3, 5, 6), [-3]),
        ((5, 4), [0]),  # statistics over the features of each row
    ],
)
def test_batch_normalization_matches_nnabla(shape, axes, beta, gamma):
    kept = axes[0] % len(shape)
    channel_shape = [n if a == kept else 1 for a, n in enumerate(shape)]
    layer = _batch_normalization(axes, 1e-4, beta, gamma)
    reference = _float64_pass(kept, 1e-4)
    _compare(layer, shape, _parameters(shape, channel_shape, beta, gamma), reference=reference)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("spatial", [(), (3, 4)])
def test_batch_normalization_at_batch_sizes_one_and_two(batch, spatial):
    shape = (batch, 3) + spatial
    channel_shape = [1, 3] + [1] * len(spatial)
    layer = _batch_normalization([1], 1e-3, True, True)
    parameters = _parameters(shape, channel_shape, True, True)
    _compare(layer, shape, parameters, reference=_float64_pass(1, 1e-3))


def _float64_pass(kept: int, eps: float):
    """G, <v, g_i> and sum_i H_i v of a BatchNormalization :class:`_Graph` in float64: its
    gradient by plain backpropagation written out here, H v by central differences of it."""

    def reference(graph: _Graph):
        inputs = graph.inputs.d.astype(np.float64)
        target = graph.target.d.astype(np.float64)
        names = [n for n, p in graph.parameters.items() if p.need_grad]
        theta = [graph.parameters[n].d.astype(np.float64) for n in names]
        v = [d.d.astype(np.float64) for d in graph.directions]
        axes = tuple(a for a in range(inputs.ndim) if a != kept)

        def gradient(values, weights):
            p = dict(zip(names, values))
            x = np.tanh(inputs * p["scale"])
            centred = x - x.mean(axis=axes, keepdims=True)
            s = 1.0 / np.sqrt((centred**2).mean(axis=axes, keepdims=True) + eps)
            xhat = centred * s
            y = p.get("gamma", 1.0) * xhat + p.get("beta", 0.0)
            weight = weights.reshape((-1,) + (1,) * (inputs.ndim - 1))
            dy = weight * target * (1.0 - np.tanh(y) ** 2)
            g = {"beta": dy.sum(axis=axes, keepdims=True)}
            g["gamma"] = (dy * xhat).sum(axis=axes, keepdims=True)
            t = dy * p.get("gamma", 1.0)
            dx = s * (
                t
                - t.mean(axis=axes, keepdims=True)
                - xhat * (t * xhat).mean(axis=axes, keepdims=True)
            )
            g["scale"] = (dx * (1.0 - x**2) * inputs).sum(axis=0, keepdims=True)
            return [g[n] for n in names]

        ones = np.ones(len(inputs))
        step = 1e-6
        plus = gradient([a + step * b for a, b in zip(theta, v)], ones)
        minus = gradient([a - step * b for a, b in zip(theta, v)], ones)
        hv = [(a - b) / (2 * step) for a, b in zip(plus, minus)]
        rows = np.eye(len(inputs))
        dots = [sum(float(np.sum(g * d)) for g, d in zip(gradient(theta, r), v)) for r in rows]
        return gradient(theta, ones), np.array(dots), hv

    return reference


def test_batch_normalization_leaves_running_statistics_alone():
    parameters = _parameters((4, 3, 5, 5), [1, 3, 1, 1], True, True)
    before = {name: p.d.copy() for name, p in parameters.items()}
    _Graph(_batch_normalization([1], 1e-4, True, True), True, (4, 3, 5, 5), parameters).run()
    for name, p in parameters.items():
        np.testing.assert_array_equal(p.d, before[name])


def test_batch_normalization_output_is_nnabla_bit_for_bit():
    """Large mean against the spread: nnabla's own float32 statistics, not recomputed ones."""
    import nnabla as nn
    import nnabla.functions as F

    rng = np.random.RandomState(3)
    x = nn.Variable.from_numpy_array((rng.randn(8, 4, 6, 6) * 0.05 + 2.0).astype(np.float32))
    params = _parameters((8, 4, 6, 6), [1, 4, 1, 1], True, True)
    args = [params[n] for n in ("beta", "gamma", "mean", "var")]
    with SecondOrderLayers() as layers:
        (fast,) = layers.build(
            _batch_normalization([1], 1e-4, True, True)["function"], [x] + args, True
        )
    plain = F.batch_normalization(x, *args, eps=1e-4, batch_stat=True)
    fast.forward()
    plain.forward()
    np.testing.assert_array_equal(fast.d, plain.d)


def test_batch_normalization_on_running_statistics_is_left_to_nnabla():
    import nnabla as nn

    function = _function("BatchNormalization", axes=[1], eps=1e-4, batch_stat=False)
    x = nn.Variable((2, 3))
    params = _parameters((2, 3), [1, 3], True, True)
    args = [x] + [params[n] for n in ("beta", "gamma", "mean", "var")]
    with SecondOrderLayers() as layers:
        assert layers.build(function, args, True) is None
        training = _batch_normalization([1], 1e-4, True, True)["function"]
        assert layers.build(training, args, False) is None


def test_batch_normalization_over_several_axes_is_left_to_nnabla():
    """nnabla's BatchNormalization function takes one axis (its Python wrapper reshapes)."""
    import nnabla as nn

    x = nn.Variable((2, 3, 4, 5))
    params = _parameters(x.shape, [1, 3, 1, 5], True, True)
    args = [x] + [params[n] for n in ("beta", "gamma", "mean", "var")]
    with SecondOrderLayers() as layers:
        function = _batch_normalization([1, 3], 1e-4, True, True)["function"]
        assert layers.build(function, args, True) is None


# --------------------------------------------------------------------------------------
# ReLU and MaxPooling


def _relu():
    import nnabla.functions as F

    return {"function": _function("ReLU"), "inputs": [], "nnabla": F.relu}


def _max_pooling(kernel, ignore_border=True):
    import nnabla.functions as F

    function = _function(
        "MaxPooling", kernel=kernel, stride=kernel, ignore_border=ignore_border, pad=[0, 0]
    )
    return {
        "function": function,
        "inputs": [],
        "nnabla": lambda x: F.max_pooling(x, tuple(kernel), tuple(kernel), ignore_border),
    }


@pytest.mark.usefixtures("any_size")
def test_relu_matches_nnabla():
    _compare(_relu(), (4, 3, 5, 5), _parameters((4, 3, 5, 5), None, False, False))


@pytest.mark.parametrize(
    "shape, kernel",
    [
        ((4, 3, 6, 8), [2, 2]),
        ((3, 2, 9, 7), [2, 2]),  # the last row and column are in no window
        ((2, 3, 9, 6), [3, 2]),
        ((5, 8, 4), [2, 2]),  # 3-D input
    ],
)
@pytest.mark.usefixtures("any_size")
def test_max_pooling_matches_nnabla(shape, kernel):
    _compare(_max_pooling(kernel), shape, _parameters(shape, None, False, False))


@pytest.mark.usefixtures("any_size")
def test_max_pooling_ties_go_where_nnabla_puts_them():
    """Equal values in a window (ReLU zeros, repeated pixels): the same element gets dy."""
    import nnabla as nn
    import nnabla.functions as F

    values = np.random.RandomState(4).randint(0, 3, size=(3, 2, 6, 6)).astype(np.float32)
    dy = np.random.RandomState(5).randn(3, 2, 3, 3).astype(np.float32)
    with SecondOrderLayers() as layers:
        x = nn.Variable.from_numpy_array(values, need_grad=True)
        (fast,) = layers.build(_max_pooling([2, 2])["function"], [x], True)
        (g_fast,) = nn.grad([fast], [x], grad_outputs=[dy])
        plain = F.max_pooling(x, (2, 2))
        (g_plain,) = nn.grad([plain], [x], grad_outputs=[dy])
    for y in (fast, plain, g_fast, g_plain):
        y.forward()
    np.testing.assert_array_equal(fast.d, plain.d)
    np.testing.assert_array_equal(g_fast.d, g_plain.d)


@pytest.mark.parametrize(
    "fields",
    [
        {"kernel": [3, 3], "stride": [2, 2], "pad": [0, 0]},  # windows overlap
        {"kernel": [2, 2], "stride": [2, 2], "pad": [1, 1]},
        {"kernel": [2, 2], "stride": [2, 2], "pad": [0, 0], "ignore_border": False},
        {"kernel": [2], "stride": [2], "pad": [0]},
    ],
)
def test_other_max_pooling_settings_are_left_to_nnabla(fields):
    import nnabla as nn

    x = nn.Variable((2, 3, 5, 5))
    with SecondOrderLayers() as layers:
        assert layers.build(_function("MaxPooling", **fields), [x], True) is None


@pytest.mark.parametrize("kind", ["Tanh", "Sigmoid"])
@pytest.mark.usefixtures("any_size")
def test_tanh_and_sigmoid_backward_match_nnabla(kind):
    import nnabla.functions as F

    layer = {"function": _function(kind), "inputs": [], "nnabla": getattr(F, kind.lower())}
    parameters = _parameters((4, 3, 5), None, False, False)
    _compare(layer, (4, 3, 5), parameters, uses=["SecondOrderSlopeGradient"])


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.usefixtures("any_size")
def test_convolution_bias_gradient_matches_nnabla(with_bias):
    import nnabla as nn
    import nnabla.functions as F

    rng = np.random.RandomState(7)
    shape = (3, 2, 6, 6)
    parameters = _parameters(shape, None, False, False)
    parameters["W"] = nn.Variable.from_numpy_array(
        rng.randn(4, 2, 3, 3).astype(np.float32), need_grad=True
    )
    names = ["W"]
    if with_bias:
        parameters["b"] = nn.Variable.from_numpy_array(
            rng.randn(4).astype(np.float32), need_grad=True
        )
        names.append("b")
    layer = {
        "function": _function("Convolution"),
        "inputs": names,
        "nnabla": lambda x, w, b=None: F.convolution(x, w, b, pad=(1, 1)),
    }
    _compare(layer, shape, parameters, uses=["SecondOrderChannelSum"] if with_bias else [])


# --------------------------------------------------------------------------------------
# Scope of the replacement


def test_registry_is_restored_even_after_an_error():
    from nnabla.backward_functions import registry

    before = dict(registry)
    with pytest.raises(RuntimeError), SecondOrderLayers():
        assert FORWARD_NAMES["BatchNormalization"] in registry
        raise RuntimeError("boom")
    assert registry == before


def _variable(shape):
    import nnabla as nn

    return nn.Variable(shape, need_grad=True)


@pytest.mark.usefixtures("any_size")
def test_other_contexts_get_nnabla_layers():
    import nnabla as nn
    import nnabla.functions as F

    context = nn.get_current_context()
    other = nn.Context(backend=["cudnn:float", "cuda:float", "cpu:float"], array_class="CudaArray")
    x = nn.Variable((2, 3, 4, 4))
    with SecondOrderLayers() as layers, nn.context_scope(other):
        assert layers.build(_relu()["function"], [x], True) is None
        y = nn.Variable((2, 3), need_grad=True)
        (g,) = nn.grad([F.sum(F.tanh(y))], [y])
        assert g.parent.info.type_name != "SecondOrderSlopeGradient"
    assert nn.get_current_context() == context


def test_small_layers_stay_nnabla():
    import nnabla as nn
    import nnabla.functions as F

    small = nn.Variable((2, 3, 8, 8), need_grad=True)
    with SecondOrderLayers() as layers:
        assert layers.build(_relu()["function"], [small], True) is None
        assert layers.build(_max_pooling([2, 2])["function"], [small], True) is None
        (g,) = nn.grad([F.sum(F.tanh(small))], [small])
        assert g.parent.info.type_name != "SecondOrderSlopeGradient"
        large = nn.Variable((8, 16, 8, 8), need_grad=True)
        assert layers.build(_relu()["function"], [large], True) is not None
        (g,) = nn.grad([F.sum(F.tanh(large))], [large])
        assert g.parent.info.type_name == "SecondOrderSlopeGradient"


@pytest.mark.usefixtures("any_size")
def test_disabled_layers_are_nnabla_throughout():
    from nnabla.backward_functions import registry

    before = dict(registry)
    with SecondOrderLayers(enabled=False) as layers:
        assert registry == before
        assert layers.build(_relu()["function"], [_variable((2, 3))], True) is None


def test_ctrl_c_inside_a_python_function_stays_a_keyboard_interrupt():
    import nnabla as nn
    import nnabla.functions as F

    class Interrupted(masks._MaskedGradient):
        def forward_impl(self, inputs, outputs):
            raise KeyboardInterrupt

    x = nn.Variable((2, 3), need_grad=True)
    y = F.sum(Interrupted(nn.get_current_context())(x, x) * 2.0)
    with pytest.raises(SystemError):
        y.forward()
    with pytest.raises(KeyboardInterrupt), second_order.passing_interrupts():
        y.forward()
    with pytest.raises(SystemError), second_order.passing_interrupts():
        raise SystemError("not an interrupt")


# --------------------------------------------------------------------------------------
# The sample models and the real NNC model


def _case(samples_dir: Path, name: str):
    data = {"digits_cnn": "digits", "digits_rgb_resnet": "digits_rgb"}[name]
    return samples_dir / "models" / name / "results.nnp", samples_dir / data


def _model_pass_matches(nnp: Path, data: Path, rows: np.ndarray, reference: bool) -> None:
    model = load_model(nnp)
    train = load_dataset(data / "train.csv", model.data_variables, model.normalize_images)
    graphs = GraphCache(model, ParameterSet(model))
    params = graphs.params
    before = {name: p.d.copy() for name, p in params.variables.items()}
    rng = np.random.RandomState(6)
    v = [(rng.randn(*params[n].shape) * 1e-2).astype(np.float32) for n in model.trainable]
    batch = train.batch(rows)
    fast = AutodiffPass(graphs)
    gradient = fast.prepare(batch)
    dots, hv = fast.finish(v)
    plain = AutodiffPass(graphs, fast_layers=False)
    plain_gradient = plain.prepare(batch)
    plain_dots, plain_hv = plain.finish(v)
    for name, p in params.variables.items():  # plain moved BatchNormalization's statistics
        if name not in model.trainable:
            p.d = before[name]
    scale = np.abs(flat(plain_gradient)).max()
    np.testing.assert_allclose(flat(gradient), flat(plain_gradient), atol=MODEL_TOLERANCE * scale)
    _assert_close(dots, plain_dots, MODEL_TOLERANCE)
    _assert_close(flat(hv), flat(plain_hv), MODEL_TOLERANCE)
    if reference:
        ref_dots, ref_hv = per_row_reference(graphs, batch, v, fast_layers=False)
        _assert_close(dots, ref_dots, MODEL_TOLERANCE)
        _assert_close(flat(hv), flat(ref_hv), MODEL_TOLERANCE)
        fast_dots, fast_hv = per_row_reference(graphs, batch, v)
        _assert_close(fast_dots, ref_dots, MODEL_TOLERANCE)
        _assert_close(flat(fast_hv), flat(ref_hv), MODEL_TOLERANCE)


# (Batches of one row: tests/influence/second_order/test_equivalents.py.)
@pytest.mark.parametrize("rows", [np.arange(3, 11), np.array([2, 9])])
def test_sample_cnn_with_batch_normalization(samples_dir, rows):
    _model_pass_matches(*_case(samples_dir, "digits_cnn"), rows, reference=True)


def test_resnet_sample_per_row_reference(samples_dir):
    _model_pass_matches(*_case(samples_dir, "digits_rgb_resnet"), np.arange(2), reference=True)


def test_real_nnc_model(nnc_fixture, samples_dir):
    _model_pass_matches(nnc_fixture, samples_dir / "digits", np.arange(12), reference=True)
