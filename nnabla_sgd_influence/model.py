"""Stage 1: read an NNC ``.nnp`` into plain data, and build its networks as nnabla graphs.

Everything is found through the optimizer section of the file, never by guessing from names
or positions: the training network is the optimizer's ``network_name``, its inputs are the
``data_variable`` entries, the loss is the ``loss_variable`` entries and the trained parameters
are the ``parameter_variable`` entries with a learning-rate multiplier above zero.
"""

from __future__ import annotations

import copy
import fnmatch
import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .context import skip_missing_extension_lookup
from .errors import InfluenceError

log = logging.getLogger(__name__)
skip_missing_extension_lookup()

# Loss functions whose second input is a target read from the dataset, and what it holds.
_CLASS_TARGET_LOSSES = {"CategoricalCrossEntropy", "SoftmaxCrossEntropy"}
_BINARY_TARGET_LOSSES = {"BinaryCrossEntropy", "SigmoidCrossEntropy"}


@dataclass(frozen=True)
class DataVariable:
    """One network input fed from one dataset column (``variable_name`` <-> ``data_name``)."""

    variable_name: str
    data_name: str
    shape: Tuple[int, ...]  # one row's shape, without the batch axis
    n_classes: Optional[int] = None  # set when the variable holds integer class labels
    binary_target: bool = False  # set when the variable holds targets in [0, 1]

    @property
    def is_label(self) -> bool:
        return self.n_classes is not None or self.binary_target


@dataclass
class SolverSpec:
    """The optimizer's solver as written in the ``.nnp``."""

    type: str
    hyper_parameters: Dict[str, float]
    weight_decay: float
    proto: object  # the nnabla_pb2.Solver message, for the learning-rate schedule
    # State saved by NNC (per parameter: arrays by state name, plus the step count "t").
    state: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    # Iteration at which the saved training stopped; retraining continues the schedule there.
    start_iteration: int = 0


@dataclass(frozen=True)
class Layer:
    name: str
    type: str


@dataclass
class NnpModel:
    """Everything training and the retrace need from a ``.nnp``, as plain data."""

    path: Path
    train_network: str
    eval_network: str
    eval_in_test_mode_of_train: bool  # no monitor network: evaluate the training network
    data_variables: List[DataVariable]
    loss_variables: List[str]
    parameters: Dict[str, np.ndarray]  # every parameter of the file, by name
    trainable: List[str]  # parameters the solver updates (multiplier > 0), in file order
    solver: SolverSpec
    layers: List[Layer]  # functions of the training network
    normalize_images: bool  # divide pixels by 255
    network_batch_size: int
    proto: object = field(repr=False, default=None)  # nnabla_pb2.NNablaProtoBuf

    @property
    def layer_types(self) -> List[str]:
        return sorted({layer.type for layer in self.layers})

    def layers_of_type(self, *types: str) -> List[Layer]:
        return [layer for layer in self.layers if layer.type in types]

    @property
    def n_trainable(self) -> int:
        return int(sum(self.parameters[name].size for name in self.trainable))


# --------------------------------------------------------------------------------------
# Reading the file


def load_model(path: Union[str, Path]) -> NnpModel:
    """Read ``path`` (an NNC ``results.nnp``) or raise :class:`InfluenceError`."""
    path = Path(path)
    if not path.is_file():
        raise InfluenceError(f"model file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InfluenceError(f"{path} is not a .nnp file (not a zip archive: {error})") from None
    with archive:
        proto = _read_network_definition(archive, path)
        parameters = _read_parameters(archive, proto, path)
        optimizer = _the_optimizer(proto, path)
        state = _read_solver_state(archive, optimizer.name, path)

    network = _network(proto, optimizer.network_name, path)
    loss_variables = [entry.variable_name for entry in optimizer.loss_variable]
    if not loss_variables:
        raise InfluenceError(f"{path}: the optimizer '{optimizer.name}' names no loss variable")
    known = {v.name for v in network.variable}
    for name in loss_variables:
        if name not in known:
            raise InfluenceError(
                f"{path}: loss variable '{name}' is not in network '{network.name}'"
            )

    if optimizer.update_interval > 1:
        log.warning(
            "%s: update_interval %d is not reproduced; retraining updates after every batch",
            path,
            optimizer.update_interval,
        )
    eval_name, eval_is_train = _evaluation_network_name(proto, optimizer.network_name)
    if eval_is_train:
        log.info(
            "%s has no monitor network; the training network '%s' is evaluated in test mode",
            path,
            optimizer.network_name,
        )
    trainable = _trainable_parameters(optimizer, network)
    for name in trainable:
        if name not in parameters:
            raise InfluenceError(f"{path}: parameter '{name}' has no stored value")

    solver = _solver_spec(optimizer, state, proto)
    return NnpModel(
        path=path,
        train_network=network.name,
        eval_network=eval_name,
        eval_in_test_mode_of_train=eval_is_train,
        data_variables=_data_variables(optimizer, network, path),
        loss_variables=loss_variables,
        parameters=parameters,
        trainable=trainable,
        solver=solver,
        layers=[Layer(f.name, f.type) for f in network.function],
        normalize_images=not _no_image_normalization(proto),
        network_batch_size=int(network.batch_size) if network.batch_size > 0 else 1,
        proto=proto,
    )


def _read_network_definition(archive: zipfile.ZipFile, path: Path):
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    names = archive.namelist()
    texts = [n for n in names if n.endswith((".nntxt", ".prototxt"))]
    binaries = [n for n in names if n.endswith(".protobuf") and "parameter" not in n]
    if not texts and not binaries:
        raise InfluenceError(f"{path} is not a .nnp file: it holds no network definition")
    try:
        for name in texts:
            text_format.Merge(archive.read(name).decode("utf-8"), proto)
        for name in binaries:
            part = nnabla_pb2.NNablaProtoBuf()
            part.ParseFromString(archive.read(name))
            proto.MergeFrom(part)
    except Exception as error:  # protobuf raises several unrelated types
        raise InfluenceError(f"{path}: cannot read the network definition ({error})") from None
    return proto


def _read_parameters(archive: zipfile.ZipFile, proto, path: Path) -> Dict[str, np.ndarray]:
    import h5py

    parameters: Dict[str, np.ndarray] = {}
    for entry in proto.parameter:  # parameters stored inside the network definition
        parameters[entry.variable_name] = np.asarray(entry.data, dtype=np.float32).reshape(
            tuple(entry.shape.dim)
        )
    for name in archive.namelist():
        if name.endswith(".h5") and "parameter" in name:
            with h5py.File(io.BytesIO(archive.read(name)), "r") as h5:
                ordered = _h5_datasets(h5)
                for _, key, value in sorted(ordered, key=lambda item: item[0]):
                    parameters[key] = np.asarray(value, dtype=np.float32)
        elif name.endswith(".protobuf") and "parameter" in name:
            from nnabla.utils import nnabla_pb2

            part = nnabla_pb2.NNablaProtoBuf()
            part.ParseFromString(archive.read(name))
            for entry in part.parameter:
                parameters[entry.variable_name] = np.asarray(entry.data, dtype=np.float32).reshape(
                    tuple(entry.shape.dim)
                )
    if not parameters:
        raise InfluenceError(f"{path} holds no trained parameters (no parameter.h5)")
    return parameters


def _h5_datasets(h5) -> List[Tuple[int, str, np.ndarray]]:
    """(stored index, name, value) of every dataset in an nnabla parameter file."""
    import h5py

    found: List[Tuple[int, str, np.ndarray]] = []

    def visit(key: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((int(obj.attrs.get("index", 0)), key, obj[()]))

    h5.visititems(visit)
    return found


def _read_solver_state(
    archive: zipfile.ZipFile, optimizer_name: str, path: Path
) -> Dict[str, Dict[str, np.ndarray]]:
    """Solver state NNC saves beside the parameters (``Optimizer_Adam_optimizer.h5.optimizer``)."""
    import h5py

    candidates = [
        n
        for n in archive.namelist()
        if n.endswith(".optimizer") and Path(n).name.startswith(optimizer_name + "_")
    ]
    if not candidates:
        return {}
    state: Dict[str, Dict[str, np.ndarray]] = {}
    try:
        with h5py.File(io.BytesIO(archive.read(candidates[0])), "r") as h5:

            def visit(key: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    parameter, _, state_name = key.rpartition("/")
                    state.setdefault(parameter, {})[state_name] = np.asarray(obj[()])

            h5.visititems(visit)
    except OSError as error:
        log.warning("%s: ignoring unreadable solver state %s (%s)", path, candidates[0], error)
        return {}
    return state


def _the_optimizer(proto, path: Path):
    if not proto.optimizer:
        raise InfluenceError(
            f"{path} has no optimizer section: the training network, its data and its solver "
            "are unknown (use the results.nnp of a training run)"
        )
    if len(proto.optimizer) > 1:
        log.info(
            "%s has %d optimizers; using the first, '%s'",
            path,
            len(proto.optimizer),
            proto.optimizer[0].name,
        )
    return proto.optimizer[0]


def _network(proto, name: str, path: Path):
    for network in proto.network:
        if network.name == name:
            return network
    raise InfluenceError(f"{path}: network '{name}' named by the optimizer is missing")


def _evaluation_network_name(proto, train_name: str) -> Tuple[str, bool]:
    names = {n.name for n in proto.network}
    for monitor in proto.monitor:
        if monitor.network_name in names and monitor.network_name != train_name:
            return monitor.network_name, False
    return train_name, True


def _trainable_parameters(optimizer, network) -> List[str]:
    """Parameters with a learning-rate multiplier above zero; entries may be glob patterns."""
    in_network = [v.name for v in network.variable if v.type == "Parameter"]
    multiplier: Dict[str, float] = {}
    for entry in optimizer.parameter_variable:
        for name in fnmatch.filter(in_network, entry.variable_name) or [entry.variable_name]:
            multiplier[name] = entry.learning_rate_multiplier
    return [name for name in in_network if multiplier.get(name, 0.0) > 0.0]


def _data_variables(optimizer, network, path: Path) -> List[DataVariable]:
    shapes = {v.name: tuple(int(d) for d in v.shape.dim) for v in network.variable}
    targets = _loss_targets(network, shapes)
    result = []
    for entry in optimizer.data_variable:
        if entry.variable_name not in shapes:
            raise InfluenceError(
                f"{path}: data variable '{entry.variable_name}' is not in network '{network.name}'"
            )
        shape = shapes[entry.variable_name]
        row_shape = shape[1:] if shape and shape[0] in (-1, network.batch_size) else shape
        n_classes, binary = targets.get(entry.variable_name, (None, False))
        result.append(
            DataVariable(
                variable_name=entry.variable_name,
                data_name=entry.data_name,
                shape=tuple(row_shape),
                n_classes=n_classes,
                binary_target=binary,
            )
        )
    if not result:
        raise InfluenceError(f"{path}: the optimizer names no data variables")
    return result


def _loss_targets(network, shapes) -> Dict[str, Tuple[Optional[int], bool]]:
    """Variables used as targets of classification losses, with their number of classes."""
    targets: Dict[str, Tuple[Optional[int], bool]] = {}
    for function in network.function:
        if len(function.input) < 2:
            continue
        target = function.input[1]
        if function.type in _CLASS_TARGET_LOSSES:
            param = (
                function.categorical_cross_entropy_param
                if function.type == "CategoricalCrossEntropy"
                else function.softmax_cross_entropy_param
            )
            scores = shapes.get(function.input[0], ())
            axis = param.axis if param.axis >= 0 else len(scores) + param.axis
            if 0 <= axis < len(scores) and scores[axis] > 0:
                targets[target] = (int(scores[axis]), False)
        elif function.type in _BINARY_TARGET_LOSSES:
            targets[target] = (None, True)
    return targets


def _no_image_normalization(proto) -> bool:
    flags = [d.no_image_normalization for d in proto.dataset]
    flags += [e.no_image_normalization for e in proto.executor]
    return any(flags)


_SOLVER_PARAM_FIELDS = {
    "Sgd": "sgd_param",
    "SGD": "sgd_param",
    "SgdW": "sgdw_param",
    "Momentum": "momentum_param",
    "Nesterov": "nesterov_param",
    "Lars": "lars_param",
    "Adadelta": "adadelta_param",
    "Adagrad": "adagrad_param",
    "AdaBelief": "adabelief_param",
    "RMSprop": "rmsprop_param",
    "RMSpropGraves": "rmsprop_graves_param",
    "Adam": "adam_param",
    "AdamW": "adamw_param",
    "AdaBound": "adabound_param",
    "Adamax": "adamax_param",
    "AMSGRAD": "amsgrad_param",
    "AMSBound": "amsbound_param",
    "Lamb": "lamb_param",
    "Lion": "lion_param",
}


def _solver_spec(optimizer, state, proto) -> SolverSpec:
    solver = optimizer.solver
    field_name = _SOLVER_PARAM_FIELDS.get(solver.type)
    if field_name is None:
        raise InfluenceError(f"solver '{solver.type}' is not supported by nnabla")
    message = getattr(solver, field_name)
    hyper = {f.name: value for f, value in message.ListFields()}
    hyper.update(
        {
            f.name: f.default_value
            for f in message.DESCRIPTOR.fields
            if f.name not in hyper and isinstance(f.default_value, (int, float))
        }
    )
    config = proto.training_config
    start = int(config.max_epoch) * int(config.iter_per_epoch)
    return SolverSpec(
        type="Sgd" if solver.type == "SGD" else solver.type,
        hyper_parameters={k: v for k, v in hyper.items() if isinstance(v, (int, float))},
        weight_decay=float(solver.weight_decay),
        proto=copy.deepcopy(solver),
        state=state,
        start_iteration=start,
    )


# --------------------------------------------------------------------------------------
# Building graphs


@dataclass
class Graph:
    """A network built at one batch size: its input placeholders and per-row loss."""

    inputs: Dict[str, object]  # variable_name -> nn.Variable of shape (batch, *row_shape)
    per_sample_loss: object  # nn.Variable of shape (batch,)
    batch_size: int
    outputs: Dict[str, object] = field(default_factory=dict)  # every variable, by name


def create_parameter_variables(model: NnpModel) -> Dict[str, object]:
    """One nn.Variable per parameter, shared by every graph built from ``model``.

    The arrays are copies: training and the retrace never write into ``model.parameters``.
    """
    import nnabla as nn

    trainable = set(model.trainable)
    return {
        name: nn.Variable.from_numpy_array(value.copy(), need_grad=name in trainable)
        for name, value in model.parameters.items()
    }


def build_graph(
    model: NnpModel,
    params: Dict[str, object],
    batch_size: int,
    training: bool,
    network_name: Optional[str] = None,
    second_order: bool = False,
    layer_builder: Optional[Callable[[object, List, bool], Optional[tuple]]] = None,
) -> Graph:
    """Build a network of ``model`` at ``batch_size`` on the shared ``params``.

    ``training`` selects the training network as the solver runs it (BatchNormalization on
    batch statistics, Dropout active); otherwise the evaluation network in test mode
    (running statistics, Dropout as identity). ``second_order`` writes layers whose backward
    nnabla cannot differentiate again as equivalent layers that it can (same values).
    ``layer_builder(function, args, training)``, when given, builds a layer first: it returns
    the layer's outputs, or None to build the layer as usual (see
    :class:`.second_order.SecondOrderLayers`).
    """
    import nnabla as nn
    import nnabla.functions as F

    if batch_size < 1:
        raise InfluenceError(f"batch size must be at least 1, got {batch_size}")
    name = network_name or (model.train_network if training else model.eval_network)
    network = _network(model.proto, name, model.path)
    shapes = {v.name: tuple(int(d) for d in v.shape.dim) for v in network.variable}

    variables: Dict[str, object] = {}
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
                    f"{model.path}: layer '{function.name}' reads '{input_name}', which is "
                    "neither a data variable, a parameter nor an earlier layer's output"
                )
        outputs = layer_builder(function, args, training) if layer_builder else None
        if outputs is None and second_order and function.type in _SECOND_ORDER_EQUIVALENTS:
            outputs = (_SECOND_ORDER_EQUIVALENTS[function.type](function, args),)
        if outputs is None:
            outputs = _call_function(function, args, batch_size, network.batch_size, training)
        for output_name, output in zip(function.output, outputs):
            variables[output_name] = output

    losses = []
    for loss_name in model.loss_variables:
        if loss_name not in variables:
            raise InfluenceError(f"{model.path}: network '{name}' does not compute '{loss_name}'")
        loss = variables[loss_name]
        # NNC averages a loss variable over all its elements: a row's share is its mean.
        axes = tuple(range(1, loss.ndim))
        losses.append(F.mean(loss, axis=axes) if axes else loss)
    per_sample = losses[0]
    for extra in losses[1:]:
        per_sample = per_sample + extra
    return Graph(
        inputs=inputs, per_sample_loss=per_sample, batch_size=batch_size, outputs=variables
    )


def _depthwise_as_grouped_convolution(function, args: Sequence):
    """DepthwiseConvolution is a Convolution with one group per input channel."""
    import nnabla.functions as F

    param = function.depthwise_convolution_param
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    channels = x.shape[param.base_axis]
    kernel = (weight.shape[0], 1) + tuple(weight.shape[1:])
    return F.convolution(
        x,
        F.reshape(weight, kernel),
        bias,
        base_axis=param.base_axis,
        pad=tuple(param.pad.dim) or None,
        stride=tuple(param.stride.dim) or None,
        dilation=tuple(param.dilation.dim) or None,
        group=channels,
    )


_SECOND_ORDER_EQUIVALENTS = {"DepthwiseConvolution": _depthwise_as_grouped_convolution}


def _call_function(function, args: Sequence, batch_size: int, file_batch: int, training: bool):
    import nnabla as nn
    import nnabla.functions as F
    from nnabla.utils.load_function import _create_function_instance

    if not training and function.type in ("Dropout", "ImageAugmentation"):
        return (F.identity(args[0]),)
    proto = copy.deepcopy(function)
    _prepare_function_proto(proto, batch_size, file_batch, training)
    instance = _create_function_instance(nn.get_current_context(), proto)
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

    from nnabla.backward_functions import registry

    missing = []
    for layer in model.layers:
        if layer.type in _SECOND_ORDER_EQUIVALENTS:
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
