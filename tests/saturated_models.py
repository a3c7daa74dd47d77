"""Confident variants of the sample models: the output layer scaled, a Sigmoid head on the MLP,
and writing a variant as a ``.nnp`` a plugin can read."""

from __future__ import annotations

import copy
import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np

HEADS = {"Sigmoid": "BinaryCrossEntropy", "Softmax": "CategoricalCrossEntropy"}


def output_layer(model):
    """The layer whose output the head's activation reads (the logits), training network."""
    network = model.network(model.train_network)
    producers = {output: f for f in network.function for output in f.output}
    for function in network.function:
        if function.type in HEADS.values():
            activation = producers[function.input[0]]
            assert HEADS[activation.type] == function.type
            return producers[activation.input[0]]
    raise ValueError("no Sigmoid or Softmax head")


def scaled(model, factor: float):
    """``model`` with its output layer's weight and bias multiplied by ``factor``: the logits
    of every row are ``factor`` times the model's (before the layer's input changes)."""
    layer = output_layer(model)
    parameters = dict(model.parameters)
    for name in layer.input[1:]:
        parameters[name] = (parameters[name] * np.float32(factor)).astype(np.float32)
    return dataclasses.replace(model, parameters=parameters)


def logits(model, dataset) -> np.ndarray:
    """The output layer's values on every row of ``dataset`` (training network, test mode)."""
    from nnabla_sgd_influence.influence.graphs import GraphCache
    from nnabla_sgd_influence.influence.parameters import ParameterSet

    graph = GraphCache(model, ParameterSet(model)).loss(len(dataset), training=False)
    graph.feed(dataset.batch(np.arange(len(dataset))))
    variable = graph.outputs[output_layer(model).output[0]]
    variable.forward()
    return variable.d.copy()


def reaching(model, dataset, reach: float):
    """``model`` scaled so that its largest |logit| on ``dataset`` is ``reach``."""
    return scaled(model, reach / float(np.abs(logits(model, dataset)).max()))


def sigmoid_head(model):
    """A two-class Softmax -> CategoricalCrossEntropy model as one logit, Sigmoid ->
    BinaryCrossEntropy: z = z_1 - z_0 gives the same probability of class 1."""
    layer = output_layer(model)
    weight, bias = layer.input[1], layer.input[2]
    parameters = dict(model.parameters)
    w, b = parameters[weight], parameters[bias]
    assert w.shape[-1] == 2, "two classes expected"
    parameters[weight] = (w[:, 1:] - w[:, :1]).astype(np.float32)
    parameters[bias] = (b[1:] - b[:1]).astype(np.float32)
    proto = copy.deepcopy(model.proto)
    for network in proto.network:
        for variable in network.variable:
            if variable.name in (weight, bias, layer.output[0]) or _reads_head(network, variable):
                variable.shape.dim[-1] = 1
        for function in network.function:
            if function.type == "Softmax":
                function.type = "Sigmoid"
                function.ClearField("softmax_param")
            elif function.type == "CategoricalCrossEntropy":
                function.type = "BinaryCrossEntropy"
                function.ClearField("categorical_cross_entropy_param")
    for parameter in proto.parameter:
        if parameter.variable_name in (weight, bias):
            parameter.shape.dim[-1] = 1
    layers = [dataclasses.replace(x, type=_renamed(x.type)) for x in model.layers]
    data_variables = [
        dataclasses.replace(d, n_classes=None, binary_target=True) if d.is_label else d
        for d in model.data_variables
    ]
    return dataclasses.replace(
        model, proto=proto, parameters=parameters, layers=layers, data_variables=data_variables
    )


def _reads_head(network, variable) -> bool:
    """Whether ``variable`` is the Softmax's output (the head's probabilities)."""
    return any(f.type == "Softmax" and variable.name in f.output for f in network.function)


def _renamed(kind: str) -> str:
    return {"Softmax": "Sigmoid", "CategoricalCrossEntropy": "BinaryCrossEntropy"}.get(kind, kind)


def write_nnp(model, source: Path, target: Path) -> Path:
    """``source`` (the ``.nnp`` ``model`` was loaded from) with ``model``'s network definition
    and parameters: a file the plugins load as ``model``."""
    import h5py
    from google.protobuf import text_format

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for index, name in enumerate(model.parameters):
            dataset = h5.create_dataset(name, data=model.parameters[name])
            dataset.attrs["need_grad"] = name in model.trainable
            dataset.attrs["index"] = index
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".nntxt"):
                data = text_format.MessageToString(model.proto).encode()
            elif item.filename == "parameter.h5":
                data = buffer.getvalue()
            dst.writestr(item.filename, data)
    return target
