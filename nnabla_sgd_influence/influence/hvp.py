"""Hessian-vector products and per-row gradient dot products, one batched pass per step.

For a batch with per-row losses l_i, a vector v over the trainable parameters and weights
w_i (all ones), let L = sum_i w_i l_i, G = dL/dtheta and s = <v, G>. One backward pass of s gives

    ds/dtheta = sum_i H_i v        and        ds/dw_i = <v, g_i>

for every row at once (:class:`AutodiffPass`). Layers whose backward nnabla cannot differentiate
again get :class:`FiniteDifferencePass`, which needs first-order gradients only:
central differences of the row losses and of the batch gradient along v. Both are a
:class:`StepPass`, what the retrace calls, as is an MPI rank's share of one
(:class:`..execution.mpi.ShardedPass`).
:func:`per_row_reference` is the plain loop over rows that both replace (tests, benchmarks).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from ..data.datasets import Batch
from ..errors import InfluenceError, excerpt, excerpt_path
from .graphs import (
    GraphCache,
    SecondOrderGraph,
    build_network,
    layers_without_second_order,
    reaches,
)
from .second_order import SecondOrderLayers, passing_interrupts

log = logging.getLogger(__name__)

PassResult = Tuple[np.ndarray, List[np.ndarray]]  # (<v, g_i> per row, sum_i H_i v)


class StepPass(Protocol):
    """What the retrace needs of one step: for a batch and a direction v over the trainable
    parameters, ``<v, g_i>`` per row and ``sum_i H_i v``.

    Either at once (``pass(batch, v)``), or in two halves for solvers whose direction depends
    on the batch gradient: ``prepare(batch)`` returns ``sum_i g_i``, then ``finish(v)``.
    """

    name: str  # "autodiff" or "finite-difference", as the result reports it

    def __call__(self, batch: Batch, v: Sequence[np.ndarray]) -> PassResult: ...

    def prepare(self, batch: Batch) -> List[np.ndarray]: ...

    def finish(self, v: Sequence[np.ndarray]) -> PassResult: ...

    @property
    def parameter_shapes(self) -> List[Tuple[int, ...]]:
        """The shape of each trainable parameter, in the order of v and of the sums."""
        ...

    def first_non_finite_layer(self, batch: Batch, v: Sequence[np.ndarray]) -> str:
        """Where the pass first turns non-finite on ``batch`` along ``v``, as the end of a
        sentence ("in the backward of layer 'X' (Type)"), or "" when it cannot tell."""
        ...


class AutodiffPass:
    """Both quantities from one forward and one backward pass of s (double backpropagation).

    With ``fast_layers`` (the default) the layers whose second order nnabla makes slow on the
    CPU are built by :mod:`.second_order`; with False, nnabla's own throughout (to compare).
    """

    name = "autodiff"

    def __init__(self, graphs: GraphCache, fast_layers: bool = True) -> None:
        self.graphs = graphs
        self.theta = graphs.params.theta
        self.fast_layers = fast_layers
        self._current: Optional[SecondOrderGraph] = None

    @property
    def parameter_shapes(self) -> List[Tuple[int, ...]]:
        return self.graphs.params.shapes

    def __call__(self, batch: Batch, v: Sequence[np.ndarray]) -> PassResult:
        self.prepare(batch)
        return self.finish(v)

    def prepare(self, batch: Batch) -> List[np.ndarray]:
        """Forward pass on ``batch``; returns the batch gradient sum_i g_i (a by-product)."""
        graph = self._current = self.graphs.second_order(_batch_size(batch), self.fast_layers)
        graph.feed(batch)
        with passing_interrupts():
            graph.directional.forward(clear_no_need_grad=True)
        return [
            g.d.astype(np.float64) if reaches(g, p) else np.zeros(p.shape)
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
        self.graphs.params.zero_grad()
        with passing_interrupts():
            graph.directional.backward(clear_buffer=True)
        return graph.weights.g.astype(np.float64), self.graphs.params.gradients()

    def first_non_finite_layer(self, batch: Batch, v: Sequence[np.ndarray]) -> str:
        """See :func:`where_not_finite`."""
        return where_not_finite(self.graphs, batch, v, self.fast_layers)


class FiniteDifferencePass:
    """Central differences along v at theta +/- eps*v, with first-order gradients only.

    Row losses are differenced with a larger step than the batch gradient: losses are smooth
    enough for it and float32 rounding favours it, while gradients of ReLU and max-pooling
    networks jump where a unit switches, so their step is kept small.
    """

    name = "finite-difference"

    def __init__(
        self, graphs: GraphCache, loss_step: float = 1e-3, gradient_step: float = 1e-5
    ) -> None:
        self.graphs = graphs
        self.params = graphs.params
        self.loss_step = loss_step
        self.gradient_step = gradient_step
        self._current = None

    @property
    def parameter_shapes(self) -> List[Tuple[int, ...]]:
        return self.params.shapes

    def __call__(self, batch: Batch, v: Sequence[np.ndarray]) -> PassResult:
        self._current = self.graphs.loss(_batch_size(batch), training=True)
        self._current.feed(batch)
        return self.finish(v)

    def prepare(self, batch: Batch) -> List[np.ndarray]:
        """Feed ``batch``; returns the batch gradient sum_i g_i at theta."""
        graph = self._current = self.graphs.loss(_batch_size(batch), training=True)
        graph.feed(batch)
        base = self.params.trainable_arrays()
        return self._at(base, [np.zeros_like(a) for a in base], 0.0, gradient=True)[1]

    def finish(self, v: Sequence[np.ndarray]) -> PassResult:
        """(<v, g_i> per row, sum_i H_i v) for the batch fed last."""
        base = self.params.trainable_arrays()
        v_norm = _norm(v)
        if v_norm == 0.0:
            return np.zeros(self._current.batch_size), [np.zeros(s) for s in self.params.shapes]
        # Steps are relative to the size of theta; eps * ||v|| is the distance moved.
        scale = max(_norm(base), 1.0) / v_norm
        with self.params.preserved(self.params.trainable):
            eps = self.loss_step * scale
            plus = self._at(base, v, eps, gradient=False)[0]
            minus = self._at(base, v, -eps, gradient=False)[0]
            dots = (plus - minus) / (2.0 * eps)
            eps = self.gradient_step * scale
            grad_plus = self._at(base, v, eps, gradient=True)[1]
            grad_minus = self._at(base, v, -eps, gradient=True)[1]
            hv = [(a - b) / (2.0 * eps) for a, b in zip(grad_plus, grad_minus)]
        return dots, hv

    def _at(self, base, v, eps: float, gradient: bool):
        """Row losses (and the batch gradient) at theta + eps * v."""
        graph = self._current
        self.params.set_trainable([value + eps * d for value, d in zip(base, v)])
        graph.sum_loss.forward(clear_no_need_grad=gradient)
        losses = graph.per_sample_loss.d.astype(np.float64)
        if not gradient:
            return losses, None
        self.params.zero_grad()
        graph.sum_loss.backward(clear_buffer=True)
        return losses, self.params.gradients()

    def first_non_finite_layer(self, batch: Batch, v: Sequence[np.ndarray]) -> str:
        """ "": the differences run every layer's first-order code only, at theta +/- eps*v,
        so no layer's second order is to blame."""
        return ""


def _norm(arrays: Sequence[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def create_pass(graphs: GraphCache, method: str = "auto") -> StepPass:
    """The pass for ``method`` (one of :data:`..arguments.HVP_METHODS`): ``auto`` is autodiff
    unless nnabla cannot differentiate twice."""
    if method == "finite-difference":
        return FiniteDifferencePass(graphs)
    autodiff = AutodiffPass(graphs)
    problem = _second_order_problem(autodiff)
    if problem is None:
        return autodiff
    model = graphs.model
    suspects = layers_without_second_order(model)
    names = ", ".join(f"'{layer.name}' ({layer.type})" for layer in suspects) or "a layer"
    if method == "autodiff":
        raise InfluenceError(
            f"{excerpt_path(model.path)}: layer {names} has no second-order backward in this "
            "nnabla "
            f"({problem}); use --hvp finite-difference"
        )
    log.warning(
        "layer %s has no second-order backward in nnabla (%s): using finite differences",
        names,
        problem,
    )
    return FiniteDifferencePass(graphs)


def _second_order_problem(autodiff: AutodiffPass) -> Optional[str]:
    """Why a trial second-order pass on a zero batch fails, or None when it works."""
    model = autodiff.graphs.model
    probe = {
        d.variable_name: np.zeros((2,) + d.shape, dtype=np.float32) for d in model.data_variables
    }
    zero = [np.zeros(p.shape, dtype=np.float32) for p in autodiff.theta]
    try:
        with autodiff.graphs.params.preserved():  # BatchNormalization statistics move
            autodiff(probe, zero)
    except NotImplementedError as error:
        return str(error) or "not implemented"
    except RuntimeError as error:
        if "not implemented" not in str(error).lower():
            raise
        return str(error).strip().splitlines()[-1]
    return None


def where_not_finite(
    graphs: GraphCache, batch: Batch, v: Sequence[np.ndarray], fast_layers: bool = True
) -> str:
    """Where the autodiff pass on ``graphs`` first turns non-finite on ``batch`` along ``v``,
    as the end of a sentence: "in the forward of layer 'X' (Type)", "in the backward of ...",
    "in the second-order backward of ..."; "" when no layer is found. The pass's graph is
    rebuilt with every value kept (only when something went wrong: it costs a pass and a graph).
    """
    with graphs.params.preserved(), SecondOrderLayers(enabled=fast_layers) as layers:
        return _first_non_finite_layer(graphs, batch, v, layers.build)


def _first_non_finite_layer(graphs: GraphCache, batch, v, layer_builder) -> str:
    """The second-order graph of ``batch``, kept whole: its forward (layer outputs), the
    first-order backward it builds (the adjoint of every layer output) and the backward of
    s = <v, G> (each layer output's gradient), searched in the order the pass computes them."""
    import nnabla as nn
    import nnabla.functions as F

    model, params = graphs.model, graphs.params
    functions = list(model.network(model.train_network).function)
    inputs, per_sample, variables = build_network(
        model, params, _batch_size(batch), True, second_order=True, layer_builder=layer_builder
    )
    known = {**{name: params[name] for name in model.parameters}, **variables}
    weighted = F.sum(per_sample)
    outputs = [name for f in functions for name in f.output if known[name].need_grad]
    wrt = [known[name] for name in outputs] + list(params.theta)
    adjoints = nn.grad([weighted], wrt)
    adjoint = {name: a for name, a in zip(outputs, adjoints)}
    adjoint.update({name: a for name, a in zip(params.trainable, adjoints[len(outputs) :])})
    terms = [
        F.sum(g * nn.Variable.from_numpy_array(np.asarray(d, np.float32)))
        for g, d, p in zip(adjoints[len(outputs) :], v, params.theta)
        if reaches(g, p)
    ]
    s = F.add_n(*terms) if len(terms) > 1 else terms[0]
    for name, placeholder in inputs.items():
        placeholder.d = batch[name]
    with passing_interrupts():
        F.sink(s, *[a for a in adjoints if a is not None]).forward(clear_no_need_grad=False)
        found = _scan(functions, known, lambda x: x.d, forward=True)
        if found:
            return f"in the forward of {found}"
        found = _scan(functions, adjoint, lambda x: x.d, forward=False)
        if found:
            return f"in the backward of {found}"
        params.zero_grad()
        s.backward(clear_buffer=False)
    found = _scan(functions, known, lambda x: x.g if x.need_grad else 0.0, forward=False)
    return f"in the second-order backward of {found}" if found else ""


def _scan(functions, values: Dict[str, object], read, forward: bool) -> str:
    """The first layer, in forward (or backward) order, whose inputs (outputs) are finite and
    whose outputs (inputs) are not, as "layer 'X' (Type)"; "" when there is none."""

    def finite(names) -> bool:
        return all(
            values.get(n) is None or np.isfinite(np.asarray(read(values[n]))).all() for n in names
        )

    for function in functions if forward else functions[::-1]:
        before, after = (function.input, function.output)
        if not forward:
            before, after = after, before
        if finite(before) and not finite(after):
            return f"layer '{excerpt(function.name)}' ({excerpt(function.type)})"
    return ""


def per_row_reference(
    graphs: GraphCache,
    batch: Batch,
    v: Sequence[np.ndarray],
    fast_layers: bool = True,
) -> PassResult:
    """The loop the batched passes replace: for each row, its gradient and its H_i v.

    Each row is selected with one-hot weights inside the whole batch, so the result stays exact
    for layers that mix rows (BatchNormalization on batch statistics). ``fast_layers`` as for
    :class:`AutodiffPass`.
    """
    params = graphs.params
    n = _batch_size(batch)
    graph = graphs.second_order(n, fast_layers)
    graph.feed(batch)
    for variable, value in zip(graph.directions, v):
        variable.d = value
    dots = np.zeros(n)
    hv = [np.zeros(s) for s in params.shapes]
    try:
        for row in range(n):
            graph.weights.d = np.eye(n, dtype=np.float32)[row]
            graph.weighted_loss.forward()
            params.zero_grad()
            graph.weighted_loss.backward()
            dots[row] = sum(float(np.sum(g * a)) for g, a in zip(params.gradients(), v))
            graph.directional.forward()
            params.zero_grad()
            graph.directional.backward()
            for total, p in zip(hv, params.theta):
                total += p.g
    finally:
        graph.weights.d = np.ones(n, dtype=np.float32)
    return dots, hv


def _batch_size(batch: Batch) -> int:
    return len(next(iter(batch.values())))
