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
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .errors import InfluenceError
from .model import NnpModel, build_graph, layers_without_second_order

log = logging.getLogger(__name__)

HVP_METHODS = ("auto", "autodiff", "finite-difference")

PassResult = Tuple[np.ndarray, List[np.ndarray]]  # (<v, g_i> per row, sum_i H_i v)


@dataclass
class _SecondOrderGraph:
    inputs: Dict[str, object]
    weights: object  # w, shape (batch,)
    weighted_loss: object  # L = sum_i w_i l_i
    directions: List[object]  # v, one variable per trainable parameter
    directional: object  # s = <v, dL/dtheta>


class AutodiffPass:
    """Both quantities from one forward and one backward pass of s (double backpropagation)."""

    name = "autodiff"

    def __init__(self, model: NnpModel, params: Dict[str, object]) -> None:
        self.model = model
        self.params = params
        self.theta = [params[n] for n in model.trainable]
        self._graphs: Dict[int, _SecondOrderGraph] = {}

    def graph(self, batch_size: int) -> _SecondOrderGraph:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = _build_second_order_graph(
                self.model, self.params, self.theta, batch_size
            )
        return self._graphs[batch_size]

    def __call__(self, batch: Dict[str, np.ndarray], v: Sequence[np.ndarray]) -> PassResult:
        graph = self.graph(_batch_size(batch))
        _feed(graph.inputs, batch)
        for variable, value in zip(graph.directions, v):
            variable.d = value
        graph.directional.forward(clear_no_need_grad=True)
        graph.weights.grad.zero()
        for p in self.theta:
            p.grad.zero()
        graph.directional.backward(clear_buffer=True)
        return graph.weights.g.astype(np.float64), [p.g.astype(np.float64) for p in self.theta]


class FiniteDifferencePass:
    """Central differences along v at theta +/- eps*v: two forward/backward passes, no H."""

    name = "finite-difference"

    def __init__(
        self, model: NnpModel, params: Dict[str, object], relative_step: float = 1e-3
    ) -> None:
        self.model = model
        self.params = params
        self.theta = [params[n] for n in model.trainable]
        self.relative_step = relative_step
        self._graphs: Dict[int, Tuple[object, object]] = {}

    def _graph(self, batch_size: int):
        import nnabla.functions as F

        if batch_size not in self._graphs:
            graph = build_graph(self.model, self.params, batch_size, training=True)
            self._graphs[batch_size] = (graph, F.sum(graph.per_sample_loss))
        return self._graphs[batch_size]

    def __call__(self, batch: Dict[str, np.ndarray], v: Sequence[np.ndarray]) -> PassResult:
        graph, total = self._graph(_batch_size(batch))
        _feed(graph.inputs, batch)
        base = [p.d.copy() for p in self.theta]
        v_norm = float(np.sqrt(sum(float(np.sum(np.square(a))) for a in v)))
        if v_norm == 0.0:
            return np.zeros(graph.batch_size), [np.zeros(p.shape) for p in self.theta]
        theta_norm = float(np.sqrt(sum(float(np.sum(np.square(a))) for a in base)))
        eps = self.relative_step * max(theta_norm, 1.0) / v_norm
        try:
            loss_plus, grad_plus = self._losses_and_gradient(graph, total, base, v, eps)
            loss_minus, grad_minus = self._losses_and_gradient(graph, total, base, v, -eps)
        finally:
            for p, value in zip(self.theta, base):
                p.d = value
        dots = (loss_plus - loss_minus) / (2.0 * eps)
        hv = [(a - b) / (2.0 * eps) for a, b in zip(grad_plus, grad_minus)]
        return dots, hv

    def _losses_and_gradient(self, graph, total, base, v, eps: float):
        for p, value, direction in zip(self.theta, base, v):
            p.d = value + eps * direction
        total.forward(clear_no_need_grad=True)
        losses = graph.per_sample_loss.d.astype(np.float64)
        for p in self.theta:
            p.grad.zero()
        total.backward(clear_buffer=True)
        return losses, [p.g.astype(np.float64) for p in self.theta]


def create_pass(
    model: NnpModel, params: Dict[str, object], method: str = "auto", probe_batch: int = 2
):
    """The pass for ``method``: ``auto`` is autodiff unless a layer has no second-order backward."""
    if method not in HVP_METHODS:
        raise InfluenceError(f"hvp method must be one of {', '.join(HVP_METHODS)}, got '{method}'")
    if method == "finite-difference":
        return FiniteDifferencePass(model, params)
    blocked = layers_without_second_order(model)
    if blocked:
        names = ", ".join(f"'{layer.name}' ({layer.type})" for layer in blocked)
        if method == "autodiff":
            raise InfluenceError(
                f"{model.path}: layer {names} has no second-order backward in this nnabla; "
                "use --hvp finite-difference"
            )
        log.warning(
            "layer %s has no second-order backward in nnabla: using finite differences", names
        )
        return FiniteDifferencePass(model, params)
    autodiff = AutodiffPass(model, params)
    try:
        autodiff.graph(probe_batch)
    except NotImplementedError as error:
        if method == "autodiff":
            raise InfluenceError(
                f"{model.path}: second-order backward is not available ({error}); "
                "use --hvp finite-difference"
            ) from None
        log.warning("second-order backward is not available (%s): using finite differences", error)
        return FiniteDifferencePass(model, params)
    return autodiff


def per_row_reference(
    model: NnpModel,
    params: Dict[str, object],
    batch: Dict[str, np.ndarray],
    v: Sequence[np.ndarray],
) -> PassResult:
    """The loop the batched passes replace: for each row, its gradient and its H_i v.

    Each row is selected with one-hot weights inside the whole batch, so the result stays exact
    for layers that mix rows (BatchNormalization on batch statistics).
    """
    theta = [params[n] for n in model.trainable]
    graph = _build_second_order_graph(model, params, theta, _batch_size(batch))
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


def _build_second_order_graph(model, params, theta, batch_size: int) -> _SecondOrderGraph:
    import nnabla as nn
    import nnabla.functions as F

    graph = build_graph(model, params, batch_size, training=True)
    weights = nn.Variable.from_numpy_array(np.ones(batch_size, dtype=np.float32), need_grad=True)
    weighted = F.sum(weights * graph.per_sample_loss)
    gradients = nn.grad([weighted], theta)
    directions = [nn.Variable(p.shape) for p in theta]
    terms = [F.sum(g * d) for g, d in zip(gradients, directions)]
    directional = terms[0] if len(terms) == 1 else F.add_n(*terms)
    return _SecondOrderGraph(graph.inputs, weights, weighted, directions, directional)


def _feed(inputs: Dict[str, object], batch: Dict[str, np.ndarray]) -> None:
    for name, variable in inputs.items():
        variable.d = batch[name]


def _batch_size(batch: Dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values())))
