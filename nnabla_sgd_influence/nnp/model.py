"""Read an NNC ``.nnp`` into plain data (:class:`NnpModel`).

Everything is found through the optimizer section of the file, never by guessing from names
or positions: the training network is the optimizer's ``network_name``, its inputs are the
``data_variable`` entries, the loss is the ``loss_variable`` entries and the trained parameters
are the ``parameter_variable`` entries with a learning-rate multiplier above zero.
Building nnabla graphs from it is :mod:`..influence.graphs`' job.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import InfluenceError, excerpt_path
from .archive import (
    PARAMETERS,
    NnpArchive,
    PicklesProtoAsBytes,
    check_variable_shapes,
    member_kind,
    parameters_of,
)
from .compat import skip_missing_extension_lookup
from .solvers import SolverSpec, read_solver_spec

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


@dataclass(frozen=True)
class Layer:
    name: str
    type: str


@dataclass
class NnpModel(PicklesProtoAsBytes):
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
    proto: object = field(repr=False, default=None)  # nnabla_pb2.NNablaProtoBuf

    def network(self, name: str):
        """The ``network`` message called ``name`` (nnabla_pb2.Network)."""
        return _network(self.proto, name, self.path)

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
        raise InfluenceError(f"model file not found: {excerpt_path(path)}")
    with NnpArchive(path) as archive:  # every member's size is checked before it is read
        proto = archive.network_definition()
        check_variable_shapes(proto, path)
        parameters = _read_parameters(archive, proto, path)
        optimizer = _the_optimizer(proto, path)
        state = _read_solver_state(archive, optimizer.name, path)

    network = _network(proto, optimizer.network_name, path)
    loss_variables = [entry.variable_name for entry in optimizer.loss_variable]
    if not loss_variables:
        raise InfluenceError(
            f"{excerpt_path(path)}: the optimizer '{optimizer.name}' names no loss variable"
        )
    known = {v.name for v in network.variable}
    for name in loss_variables:
        if name not in known:
            raise InfluenceError(
                f"{excerpt_path(path)}: loss variable '{name}' is not in network '{network.name}'"
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
            raise InfluenceError(f"{excerpt_path(path)}: parameter '{name}' has no stored value")

    solver = read_solver_spec(optimizer, state, proto)
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
        proto=proto,
    )


def _read_parameters(archive: NnpArchive, proto, path: Path) -> Dict[str, np.ndarray]:
    parameters: Dict[str, np.ndarray] = dict(parameters_of(proto, path))  # in the definition
    for name in archive.names():
        if member_kind(name) != PARAMETERS:
            continue
        if name.endswith(".h5"):
            for _, key, value in sorted(archive.read_h5(name), key=lambda item: item[0]):
                parameters[key] = np.asarray(value, dtype=np.float32)
        else:
            parameters.update(archive.parameter_protobuf(name))
    if not parameters:
        raise InfluenceError(f"{excerpt_path(path)} holds no trained parameters (no parameter.h5)")
    return parameters


def _read_solver_state(
    archive: NnpArchive, optimizer_name: str, path: Path
) -> Dict[str, Dict[str, np.ndarray]]:
    """Solver state NNC saves beside the parameters (``Optimizer_Adam_optimizer.h5.optimizer``).

    A damaged state member is an error naming it, as for any other member: retraining
    without it would silently change the scores.
    """
    candidates = [
        n
        for n in archive.names()
        if n.endswith(".optimizer") and Path(n).name.startswith(optimizer_name + "_")
    ]
    if not candidates:
        return {}
    state: Dict[str, Dict[str, np.ndarray]] = {}
    for _, key, value in archive.read_h5(candidates[0]):
        parameter, _, state_name = key.rpartition("/")
        state.setdefault(parameter, {})[state_name] = value
    return state


def _the_optimizer(proto, path: Path):
    if not proto.optimizer:
        raise InfluenceError(
            f"{excerpt_path(path)} has no optimizer section: the training network, its data "
            "and its solver "
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
    raise InfluenceError(
        f"{excerpt_path(path)}: network '{name}' named by the optimizer is missing"
    )


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
                f"{excerpt_path(path)}: data variable '{entry.variable_name}' is not in "
                f"network '{network.name}'"
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
        raise InfluenceError(f"{excerpt_path(path)}: the optimizer names no data variables")
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
