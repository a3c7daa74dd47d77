"""Build the ``.nnp``'s networks as nnabla graphs on one :class:`~.parameters.ParameterSet`.

Two kinds of graph, each built once per batch size (and mode) by :class:`GraphCache`:

* :class:`LossGraph` in training mode (BatchNormalization on batch statistics, Dropout active)
  for retraining and finite differences, or in evaluation mode (running statistics, Dropout as
  identity) for the query gradient and accuracy;
* :class:`SecondOrderGraph`, the training network with per-row weights ``w`` and the gradient
  ``G = dL/dtheta`` of ``L = sum_i w_i l_i`` kept as a graph, so that one backward pass of
  ``s = <v, G>`` gives ``sum_i H_i v`` and every ``<v, g_i>`` (see :mod:`.hvp`); layers nnabla
  cannot differentiate twice are built there as the equivalents of :mod:`.second_order`, and
  a loss or Log that reads a Sigmoid's or Softmax's probabilities is built from that layer's
  logits (:mod:`.second_order.saturation`), so that saturated outputs stay finite; on the CPU,
  BatchNormalization, ReLU, MaxPooling, Tanh, Sigmoid and Convolution's bias gradient are
  built faster (:mod:`.second_order.fast_layers`) unless ``fast_layers=False``.

A row's loss ``l_i`` is the mean of each loss variable over its non-batch elements (NNC
averages a loss variable over all of its elements), summed over the loss variables.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InfluenceError, excerpt_path
from ..nnp.compat import backward_function_registry, create_function_instance
from .second_order import SATURATING_PAIRS, SECOND_ORDER_EQUIVALENTS, SecondOrderLayers

if TYPE_CHECKING:
    from ..nnp.model import Layer, NnpModel
    from .parameters import ParameterSet

RANDOM_LAYERS = ("Dropout", "ImageAugmentation")


@dataclass
class LossGraph:
    """A network at one batch size: input placeholders, per-row losses and their reductions."""

    inputs: Dict[str, object]  # variable_name -> nn.Variable of shape (batch, *row_shape)
    per_sample_loss: object  # (batch,)
    mean_loss: object  # mean over the batch: what the solver minimizes
    sum_loss: object  # sum over the batch
    weights: object  # w, (batch,), ones; only weighted_mean_loss reads it
    weighted_mean_loss: object  # sum_i w_i l_i / batch (leave-one-out sets a row's w to 0)
    batch_size: int
    outputs: Dict[str, object] = field(default_factory=dict)  # every variable, by name

    def feed(self, batch: Dict[str, np.ndarray]) -> None:
        _feed(self.inputs, batch)


@dataclass
class SecondOrderGraph:
    """L = sum_i w_i l_i, G = dL/dtheta (kept as a graph) and s = <v, G>."""

    inputs: Dict[str, object]
    weights: object  # w, (batch,), ones
    weighted_loss: object  # L
    gradients: List[object]  # G, one per trainable parameter (None where L does not reach it)
    directions: List[object]  # v, one variable per trainable parameter
    directional: object  # s
    batch_size: int

    def feed(self, batch: Dict[str, np.ndarray]) -> None:
        _feed(self.inputs, batch)


class GraphCache:
    """Every graph of one trial, built on first use and kept per (kind, batch size).

    A dataset whose row count is not a multiple of the batch size ends with a shorter batch,
    which gets graphs of its own.
    """

    def __init__(self, model: NnpModel, params: ParameterSet) -> None:
        self.model = model
        self.params = params
        self._graphs: Dict[Tuple[str, int], object] = {}

    def loss(self, batch_size: int, training: bool) -> LossGraph:
        """The training network (``training``) or the evaluation network, in test mode."""
        key = ("train" if training else "eval", batch_size)
        if key not in self._graphs:
            self._graphs[key] = build_loss_graph(self.model, self.params, batch_size, training)
        return self._graphs[key]

    def second_order(self, batch_size: int, fast_layers: bool = True) -> SecondOrderGraph:
        """With ``fast_layers`` (the default), the CPU layers of :mod:`.second_order`."""
        key = ("second-order" if fast_layers else "second-order, nnabla's layers", batch_size)
        if key not in self._graphs:
            self._graphs[key] = build_second_order_graph(
                self.model, self.params, batch_size, fast_layers
            )
        return self._graphs[key]


def build_loss_graph(
    model: NnpModel, params: ParameterSet, batch_size: int, training: bool
) -> LossGraph:
    """A :class:`LossGraph` of the training or the evaluation network."""
    import nnabla as nn
    import nnabla.functions as F

    inputs, per_sample, outputs = build_network(model, params, batch_size, training)
    weights = nn.Variable.from_numpy_array(np.ones(batch_size, dtype=np.float32))
    return LossGraph(
        inputs=inputs,
        per_sample_loss=per_sample,
        mean_loss=F.mean(per_sample),
        sum_loss=F.sum(per_sample),
        weights=weights,
        weighted_mean_loss=F.sum(weights * per_sample) / batch_size,
        batch_size=batch_size,
        outputs=outputs,
    )


def build_second_order_graph(
    model: NnpModel, params: ParameterSet, batch_size: int, fast_layers: bool = True
) -> SecondOrderGraph:
    """The training network with per-row weights and its gradient kept as a graph.

    The forward graph and ``nn.grad`` are both built inside :class:`SecondOrderLayers`, which
    extends nnabla's backward registry for them and keeps the forwards' extra outputs alive
    until ``nn.grad`` has connected them.
    """
    import nnabla as nn
    import nnabla.functions as F

    with SecondOrderLayers(enabled=fast_layers) as layers:
        inputs, per_sample, _ = build_network(
            model, params, batch_size, True, second_order=True, layer_builder=layers.build
        )
        weights = nn.Variable.from_numpy_array(
            np.ones(batch_size, dtype=np.float32), need_grad=True
        )
        weighted = F.sum(weights * per_sample)
        gradients = nn.grad([weighted], params.theta)
    for g in gradients:
        if g is not None:
            g.persistent = True  # read after the forward pass (the batch gradient)
    directions = [nn.Variable(p.shape) for p in params.theta]
    # A parameter the loss does not reach gets no gradient graph, and contributes nothing.
    terms = [_dot(g, d) for g, d, p in zip(gradients, directions, params.theta) if reaches(g, p)]
    directional = F.reshape(terms[0] if len(terms) == 1 else F.add_n(*terms), ())
    return SecondOrderGraph(
        inputs, weights, weighted, gradients, directions, directional, batch_size
    )


def _dot(gradient, direction):
    """<gradient, direction> as a (1, 1) matrix product: one BLAS call each way, where
    F.sum(gradient * direction) takes nnabla's element-wise kernels (slow on the CPU)."""
    import nnabla.functions as F

    return F.affine(F.reshape(gradient, (1, -1)), F.reshape(direction, (-1, 1)))


def reaches(gradient, parameter) -> bool:
    """Whether ``nn.grad`` gave ``parameter`` a real gradient (the loss depends on it)."""
    return gradient is not None and gradient.shape == parameter.shape


def build_network(
    model: NnpModel,
    params: ParameterSet,
    batch_size: int,
    training: bool,
    second_order: bool = False,
    layer_builder: Optional[Callable[[object, List, bool], Optional[tuple]]] = None,
) -> Tuple[Dict[str, object], object, Dict[str, object]]:
    """(input placeholders, per-row loss, every variable by name) of one network of ``model``.

    ``training`` selects the training network as the solver runs it; otherwise the evaluation
    network in test mode. ``second_order`` writes layers whose backward nnabla cannot
    differentiate again as equivalent layers that it can (same values), and a layer that reads
    a Sigmoid's or Softmax's output as a function of that layer's input (same values, and the
    derivatives training's first-order backward has, finite where the output saturates).
    ``layer_builder(function, args, training)``, when given, builds a layer first: it returns
    the layer's outputs, or None to build the layer as usual
    (:meth:`.second_order.SecondOrderLayers.build`).
    """
    import nnabla as nn

    name = model.train_network if training else model.eval_network
    network = model.network(name)
    shapes = {v.name: tuple(int(d) for d in v.shape.dim) for v in network.variable}

    variables: Dict[str, object] = {}
    producers: Dict[str, Tuple[object, List]] = {}  # output name -> (layer, its inputs)
    inputs: Dict[str, object] = {}
    for data in model.data_variables:
        if data.variable_name in shapes:
            placeholder = nn.Variable((batch_size,) + data.shape)
            inputs[data.variable_name] = variables[data.variable_name] = placeholder
    for function in network.function:
        args = []
        for input_name in function.input:
            if input_name in variables:
                args.append(variables[input_name])
            elif input_name in params:
                args.append(params[input_name])
            else:
                raise InfluenceError(
                    f"{excerpt_path(model.path)}: layer '{function.name}' reads "
                    f"'{input_name}', which is "
                    "neither a data variable, a parameter nor an earlier layer's output"
                )
        outputs = layer_builder(function, args, training) if layer_builder else None
        if outputs is None and second_order:
            source = producers.get(function.input[0]) if function.input else None
            outputs = _second_order_equivalent(function, args, source)
        if outputs is None:
            outputs = _call_function(function, args, batch_size, network.batch_size, training)
        for output_name, output in zip(function.output, outputs):
            variables[output_name] = output
            producers[output_name] = (function, args)
    return inputs, _per_sample_loss(model, variables, name), variables


def _second_order_equivalent(
    function, args: List, source: Optional[Tuple[object, List]]
) -> Optional[tuple]:
    """The outputs of ``function`` as the second-order graph builds it, or None for as usual.

    A layer reading a Sigmoid's or Softmax's output (``source``: the layer that made its first
    input, and that layer's inputs) is built from that layer's input; the Sigmoid or Softmax
    itself stays in the graph for whatever else reads it.
    """
    if source is not None:
        pair = SATURATING_PAIRS.get((source[0].type, function.type))
        output = pair(source[0], source[1], function, args) if pair else None
        if output is not None:
            return (output,)
    if function.type in SECOND_ORDER_EQUIVALENTS:
        return (SECOND_ORDER_EQUIVALENTS[function.type](function, args),)
    return None


def _per_sample_loss(model: NnpModel, variables: Dict[str, object], network: str):
    import nnabla.functions as F

    losses = []
    for loss_name in model.loss_variables:
        if loss_name not in variables:
            raise InfluenceError(
                f"{excerpt_path(model.path)}: network '{network}' does not compute '{loss_name}'"
            )
        loss = variables[loss_name]
        axes = tuple(range(1, loss.ndim))
        losses.append(F.mean(loss, axis=axes) if axes else loss)
    per_sample = losses[0]
    for extra in losses[1:]:
        per_sample = per_sample + extra
    return per_sample


def _call_function(function, args: Sequence, batch_size: int, file_batch: int, training: bool):
    import nnabla as nn
    import nnabla.functions as F

    if not training and function.type in RANDOM_LAYERS:
        return (F.identity(args[0]),)
    proto = copy.deepcopy(function)
    _prepare_function_proto(proto, batch_size, file_batch, training)
    instance = create_function_instance(nn.get_current_context(), proto)
    outputs = instance(*args, n_outputs=len(proto.output), auto_forward=nn.get_auto_forward())
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _prepare_function_proto(proto, batch_size: int, file_batch: int, training: bool) -> None:
    """Adapt one layer's arguments to this build (batch size, mode, no in-place ops)."""
    for descriptor, message in proto.ListFields():
        if descriptor.message_type is None or not descriptor.name.endswith("_param"):
            continue
        names = {f.name for f in message.DESCRIPTOR.fields}
        if "inplace" in names:
            # Second-order gradients need the layer's input intact.
            message.inplace = False
        if "batch_stat" in names and proto.type in (
            "BatchNormalization",
            "FusedBatchNormalization",
        ):
            message.batch_stat = bool(message.batch_stat) and training
        if "shape" in names and proto.type in ("Reshape", "Broadcast"):
            dims = list(message.shape.dim)
            if dims and dims[0] in (-1, file_batch):
                dims[0] = batch_size
                del message.shape.dim[:]
                message.shape.dim.extend(dims)


def layers_without_second_order(model: NnpModel) -> List[Layer]:
    """Training-network layers whose backward nnabla may not differentiate again.

    Read from nnabla's own backward functions; some refuse only some settings (e.g. Pad in
    reflect mode), so this names suspects rather than deciding.
    """
    import inspect

    registry = backward_function_registry()
    if registry is None:  # see compat: the trial pass still decides
        return []
    missing = []
    for layer in model.layers:
        if layer.type in SECOND_ORDER_EQUIVALENTS:
            continue
        backward = registry.get(layer.type)
        if backward is None:
            missing.append(layer)
            continue
        try:
            source = inspect.getsource(backward)
        except (OSError, TypeError):
            continue
        if "NotImplementedError" in source:
            missing.append(layer)
    return missing


def _feed(inputs: Dict[str, object], batch: Dict[str, np.ndarray]) -> None:
    for name, variable in inputs.items():
        variable.d = batch[name]
