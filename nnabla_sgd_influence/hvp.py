"""Hessian-vector products and per-row gradient dot products, one batched pass per step.

For a batch with per-row losses l_i, a vector v over the trainable parameters and weights
w_i (all ones), let L = sum_i w_i l_i, G = dL/dtheta and s = <v, G>. One backward pass of s gives

    ds/dtheta = sum_i H_i v        and        ds/dw_i = <v, g_i>

for every row at once (:class:`AutodiffPass`). Layers whose backward nnabla cannot differentiate
again get :class:`FiniteDifferencePass`, which needs first-order gradients only:
central differences of the row losses and of the batch gradient along v.
:func:`per_row_reference` is the plain loop over rows that both replace (tests, benchmarks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InfluenceError
from .model import NnpModel, build_graph, layers_without_second_order
from .second_order import passing_interrupts

log = logging.getLogger(__name__)

HVP_METHODS = ("auto", "autodiff", "finite-difference")

PassResult = Tuple[np.ndarray, List[np.ndarray]]  # (<v, g_i> per row, sum_i H_i v)


@dataclass
class _SecondOrderGraph:
    inputs: Dict[str, object]
    weights: object  # w, shape (batch,)
    weighted_loss: object  # L = sum_i w_i l_i
    gradients: List[object]  # dL/dtheta, kept after the forward pass
    directions: List[object]  # v, one variable per trainable parameter
    directional: object  # s = <v, dL/dtheta>


class AutodiffPass:
    """Both quantities from one forward and one backward pass of s (double backpropagation).

    With ``fast_layers`` (the default) the layers whose second order nnabla makes slow on the
    CPU are built by :mod:`.second_order`; with False, nnabla's own throughout (to compare).
    """

    name = "autodiff"

    def __init__(
        self, model: NnpModel, params: Dict[str, object], fast_layers: bool = True
    ) -> None:
        self.model = model
        self.params = params
        self.theta = [params[n] for n in model.trainable]
        # Layers and backward functions of .second_order; False: nnabla's own throughout
        self.fast_layers = fast_layers
        self._graphs: Dict[int, _SecondOrderGraph] = {}

    def graph(self, batch_size: int) -> _SecondOrderGraph:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = _build_second_order_graph(
                self.model, self.params, self.theta, batch_size, self.fast_layers
            )
        return self._graphs[batch_size]

    def __call__(self, batch: Dict[str, np.ndarray], v: Sequence[np.ndarray]) -> PassResult:
        self.prepare(batch)
        return self.finish(v)

    def prepare(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Forward pass on ``batch``; returns the batch gradient sum_i g_i (a by-product)."""
        graph = self._current = self.graph(_batch_size(batch))
        _feed(graph.inputs, batch)
        with passing_interrupts():
            graph.directional.forward(clear_no_need_grad=True)
        return [
            g.d.astype(np.float64) if _reaches(g, p) else np.zeros(p.shape)
            for g, p in zip(graph.gradients, self.theta)
        ]

    def finish(self, v: Sequence[np.ndarray]) -> PassResult:
        """Backward pass of s for the batch of :meth:`prepare`: (<v, g_i> per row, sum H_i v).

        v only enters the backward pass (ds/dG = v), so it may be chosen after the forward
        pass, e.g. from the batch gradient.
        """
        graph = self._current
        for variable, value in zip(graph.directions, v):
            variable.d = value
        graph.weights.grad.zero()
        for p in self.theta:
            p.grad.zero()
        with passing_interrupts():
            graph.directional.backward(clear_buffer=True)
        return graph.weights.g.astype(np.float64), [p.g.astype(np.float64) for p in self.theta]


class FiniteDifferencePass:
    """Central differences along v at theta +/- eps*v, with first-order gradients only.

    Row losses are differenced with a larger step than the batch gradient: losses are smooth
    enough for it and float32 rounding favours it, while gradients of ReLU and max-pooling
    networks jump where a unit switches, so their step is kept small.
    """

    name = "finite-difference"

    def __init__(
        self,
        model: NnpModel,
        params: Dict[str, object],
        loss_step: float = 1e-3,
        gradient_step: float = 1e-5,
    ) -> None:
        self.model = model
        self.params = params
        self.theta = [params[n] for n in model.trainable]
        self.loss_step = loss_step
        self.gradient_step = gradient_step
        self._graphs: Dict[int, Tuple[object, object]] = {}

    def _graph(self, batch_size: int):
        import nnabla.functions as F

        if batch_size not in self._graphs:
            graph = build_graph(self.model, self.params, batch_size, training=True)
            self._graphs[batch_size] = (graph, F.sum(graph.per_sample_loss))
        return self._graphs[batch_size]

    def __call__(self, batch: Dict[str, np.ndarray], v: Sequence[np.ndarray]) -> PassResult:
        self._current = self._graph(_batch_size(batch))
        _feed(self._current[0].inputs, batch)
        return self.finish(v)

    def prepare(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Feed ``batch``; returns the batch gradient sum_i g_i at theta."""
        graph, total = self._current = self._graph(_batch_size(batch))
        _feed(graph.inputs, batch)
        base = [p.d.copy() for p in self.theta]
        return self._at(base, [np.zeros_like(a) for a in base], 0.0, graph, total, True)[1]

    def finish(self, v: Sequence[np.ndarray]) -> PassResult:
        """(<v, g_i> per row, sum_i H_i v) for the batch fed last."""
        graph, total = self._current
        base = [p.d.copy() for p in self.theta]
        v_norm = _norm(v)
        if v_norm == 0.0:
            return np.zeros(graph.batch_size), [np.zeros(p.shape) for p in self.theta]
        # Steps are relative to the size of theta; eps * ||v|| is the distance moved.
        scale = max(_norm(base), 1.0) / v_norm
        try:
            eps = self.loss_step * scale
            plus = self._at(base, v, eps, graph, total, gradient=False)[0]
            minus = self._at(base, v, -eps, graph, total, gradient=False)[0]
            dots = (plus - minus) / (2.0 * eps)
            eps = self.gradient_step * scale
            grad_plus = self._at(base, v, eps, graph, total, gradient=True)[1]
            grad_minus = self._at(base, v, -eps, graph, total, gradient=True)[1]
            hv = [(a - b) / (2.0 * eps) for a, b in zip(grad_plus, grad_minus)]
        finally:
            for p, value in zip(self.theta, base):
                p.d = value
        return dots, hv

    def _at(self, base, v, eps: float, graph, total, gradient: bool):
        """Row losses (and the batch gradient) at theta + eps * v."""
        for p, value, direction in zip(self.theta, base, v):
            p.d = value + eps * direction
        total.forward(clear_no_need_grad=gradient)
        losses = graph.per_sample_loss.d.astype(np.float64)
        if not gradient:
            return losses, None
        for p in self.theta:
            p.grad.zero()
        total.backward(clear_buffer=True)
        return losses, [p.g.astype(np.float64) for p in self.theta]


def _norm(arrays: Sequence[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def create_pass(model: NnpModel, params: Dict[str, object], method: str = "auto"):
    """The pass for ``method``: ``auto`` is autodiff unless nnabla cannot differentiate twice."""
    if method not in HVP_METHODS:
        raise InfluenceError(f"hvp method must be one of {', '.join(HVP_METHODS)}, got '{method}'")
    if method == "finite-difference":
        return FiniteDifferencePass(model, params)
    autodiff = AutodiffPass(model, params)
    problem = _second_order_problem(autodiff)
    if problem is None:
        return autodiff
    suspects = layers_without_second_order(model)
    names = ", ".join(f"'{layer.name}' ({layer.type})" for layer in suspects) or "a layer"
    if method == "autodiff":
        raise InfluenceError(
            f"{model.path}: layer {names} has no second-order backward in this nnabla "
            f"({problem}); use --hvp finite-difference"
        )
    log.warning(
        "layer %s has no second-order backward in nnabla (%s): using finite differences",
        names,
        problem,
    )
    return FiniteDifferencePass(model, params)


def _second_order_problem(autodiff: AutodiffPass) -> Optional[str]:
    """Why a trial second-order pass on a zero batch fails, or None when it works."""
    probe = {
        d.variable_name: np.zeros((2,) + d.shape, dtype=np.float32)
        for d in autodiff.model.data_variables
    }
    zero = [np.zeros(p.shape, dtype=np.float32) for p in autodiff.theta]
    snapshot = {name: v.d.copy() for name, v in autodiff.params.items()}
    try:
        autodiff(probe, zero)
    except NotImplementedError as error:
        return str(error) or "not implemented"
    except RuntimeError as error:
        if "not implemented" not in str(error).lower():
            raise
        return str(error).strip().splitlines()[-1]
    finally:
        for name, value in snapshot.items():  # BatchNormalization statistics moved
            autodiff.params[name].d = value
    return None


def per_row_reference(
    model: NnpModel,
    params: Dict[str, object],
    batch: Dict[str, np.ndarray],
    v: Sequence[np.ndarray],
    fast_layers: bool = True,
) -> PassResult:
    """The loop the batched passes replace: for each row, its gradient and its H_i v.

    Each row is selected with one-hot weights inside the whole batch, so the result stays exact
    for layers that mix rows (BatchNormalization on batch statistics). ``fast_layers`` as for
    :class:`AutodiffPass`.
    """
    theta = [params[n] for n in model.trainable]
    graph = _build_second_order_graph(model, params, theta, _batch_size(batch), fast_layers)
    _feed(graph.inputs, batch)
    for variable, value in zip(graph.directions, v):
        variable.d = value
    n = _batch_size(batch)
    dots = np.zeros(n)
    hv = [np.zeros(p.shape) for p in theta]
    for row in range(n):
        graph.weights.d = np.eye(n, dtype=np.float32)[row]
        graph.weighted_loss.forward()
        for p in theta:
            p.grad.zero()
        graph.weighted_loss.backward()
        dots[row] = sum(float(np.sum(p.g.astype(np.float64) * a)) for p, a in zip(theta, v))
        graph.directional.forward()
        for p in theta:
            p.grad.zero()
        graph.directional.backward()
        for total, p in zip(hv, theta):
            total += p.g
    return dots, hv


def _build_second_order_graph(
    model, params, theta, batch_size: int, fast_layers: bool = True
) -> _SecondOrderGraph:
    import nnabla as nn
    import nnabla.functions as F

    from .second_order import SecondOrderLayers

    with SecondOrderLayers(enabled=fast_layers) as layers:
        graph = build_graph(
            model, params, batch_size, training=True, second_order=True, layer_builder=layers.build
        )
        weights = nn.Variable.from_numpy_array(
            np.ones(batch_size, dtype=np.float32), need_grad=True
        )
        weighted = F.sum(weights * graph.per_sample_loss)
        gradients = nn.grad([weighted], theta)
    for g in gradients:
        if g is not None:
            g.persistent = True  # read after the forward pass (the batch gradient)
    directions = [nn.Variable(p.shape) for p in theta]
    # A parameter the loss does not reach gets no gradient graph, and contributes nothing.
    terms = [_dot(g, d) for g, d, p in zip(gradients, directions, theta) if _reaches(g, p)]
    directional = F.reshape(terms[0] if len(terms) == 1 else F.add_n(*terms), ())
    return _SecondOrderGraph(graph.inputs, weights, weighted, gradients, directions, directional)


def _dot(gradient, direction):
    """<gradient, direction> as a (1, 1) matrix product: one BLAS call each way, where
    F.sum(gradient * direction) takes nnabla's element-wise kernels (slow on the CPU)."""
    import nnabla.functions as F

    return F.affine(F.reshape(gradient, (1, -1)), F.reshape(direction, (-1, 1)))


def _reaches(gradient, parameter) -> bool:
    """Whether ``nn.grad`` gave ``parameter`` a real gradient (the loss depends on it)."""
    return gradient is not None and gradient.shape == parameter.shape


def _feed(inputs: Dict[str, object], batch: Dict[str, np.ndarray]) -> None:
    for name, variable in inputs.items():
        variable.d = batch[name]


def _batch_size(batch: Dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values())))
