"""Layers written for the second-order pass so that nnabla can differentiate them at all.

:data:`SECOND_ORDER_EQUIVALENTS` maps a layer type to a builder ``(function_proto, inputs) ->
output`` computing the same values; :mod:`..graphs` uses it when it builds a second-order graph.

**DepthwiseConvolution** has no second-order backward in nnabla; it is a Convolution with one
group per input channel, which has.

**Cross-entropy losses.**

nnabla 1.39's backward functions of ``CategoricalCrossEntropy`` and ``SoftmaxCrossEntropy``
(``nnabla/backward_function/categorical_cross_entropy.py``, ``softmax_cross_entropy.py``), which
``nn.grad`` uses to build a gradient graph, rebuild the one-hot target with the shape
``[s for s in t.shape if s != 1]``: every axis of size 1 is dropped, the batch axis included.
For a batch of one row (``t`` of shape ``(1, 1)``) the one-hot target comes out as ``(C,)``
instead of ``(1, C)``, and multiplying it with the incoming gradient of shape ``(1, 1)`` fails
with "Dimensions of inputs must match". Any other axis of size 1 (``x`` of shape
``(B, C, 1, 1)``) breaks it the same way at every batch size. The first-order backward (C++)
is not affected, so training and the validation gradient work; only second-order graphs do not.

The functions here compute the same values with layers whose backward functions keep every
axis: the target's one-hot mask is built with the shape of ``x`` itself, then

    CategoricalCrossEntropy:  y = -log(max(sum_axis(mask * x), FLT_MIN))
    SoftmaxCrossEntropy:      y = -sum_axis(mask * log_softmax(x))

both keeping the class axis with size 1, as nnabla's layers do. The forward value of the first
is bit-identical to nnabla's (the sum adds exact zeros); the second differs by float32 rounding
of the log-sum-exp. Targets must be class indices in [0, C): the datasets refuse anything else
before training, so nnabla's "-1: no class" convention never reaches these graphs.

"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np

FLT_MIN = float(np.finfo(np.float32).tiny)  # the clamp of nnabla's CategoricalCrossEntropy


def positive_axis(axis: int, ndim: int) -> int:
    """``axis`` counted from the front (nnabla's negative axes count from the back)."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is outside an array of {ndim} dimensions")
    return axis % ndim


def one_hot_mask(x, target, axis: int):
    """A constant of the shape of ``x``: 1 where the class axis meets the row's target.

    ``target`` has the shape of ``x`` with size 1 on ``axis`` and holds class indices.
    """
    import nnabla.functions as F

    shape: Tuple[int, ...] = tuple(x.shape)
    axis = positive_axis(axis, len(shape))
    classes = shape[axis]
    rest = shape[:axis] + shape[axis + 1 :]
    expected = rest[:axis] + (1,) + rest[axis:]
    if tuple(target.shape) != expected:
        raise ValueError(f"target shape {tuple(target.shape)} does not fit scores {shape}")
    flat = F.reshape(target, (-1, 1), inplace=False)  # rows in the order of ``rest``
    mask = F.reshape(F.one_hot(flat, (classes,)), rest + (classes,), inplace=False)
    last = len(shape) - 1
    if axis != last:
        mask = F.transpose(mask, tuple(range(axis)) + (last,) + tuple(range(axis, last)))
    return mask


def categorical_cross_entropy(x, target, axis: int):
    """``-log(x[target])`` along ``axis``, as nnabla's CategoricalCrossEntropy, any shape."""
    import nnabla.functions as F

    axis = positive_axis(axis, x.ndim)
    picked = F.sum(x * one_hot_mask(x, target, axis), axis=axis, keepdims=True)
    return -F.log(F.maximum_scalar(picked, FLT_MIN))


def softmax_cross_entropy(x, target, axis: int):
    """``-log_softmax(x)[target]`` along ``axis``, as nnabla's SoftmaxCrossEntropy, any shape."""
    import nnabla.functions as F

    axis = positive_axis(axis, x.ndim)
    log_p = F.log_softmax(x, axis=axis)
    return -F.sum(one_hot_mask(x, target, axis) * log_p, axis=axis, keepdims=True)


# The axis as nnabla's own loader reads it (``nnabla/utils/load_function.py``): the field as is.


def _categorical_layer(function, args: Sequence):
    axis = int(function.categorical_cross_entropy_param.axis)
    return categorical_cross_entropy(args[0], args[1], axis)


def _softmax_layer(function, args: Sequence):
    return softmax_cross_entropy(args[0], args[1], int(function.softmax_cross_entropy_param.axis))


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


SECOND_ORDER_EQUIVALENTS: Dict[str, Callable] = {
    "DepthwiseConvolution": _depthwise_as_grouped_convolution,
    "CategoricalCrossEntropy": _categorical_layer,
    "SoftmaxCrossEntropy": _softmax_layer,
}
