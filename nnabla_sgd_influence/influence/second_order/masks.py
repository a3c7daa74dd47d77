"""ReLU and MaxPooling whose backward keeps its mask, and so does that backward's own."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
from nnabla.function import PythonFunction

from . import _arrays
from ._arrays import FORWARD_NAMES, combine, context, put, read


def _build_relu(function, args: List, training: bool):
    if args[0].size < _arrays.MIN_ELEMENTS:
        return None
    y, mask = _ReluForward(context())(args[0], n_outputs=2)
    return (y,), (mask.apply(need_grad=False),)


class _ReluForward(PythonFunction):
    """x -> (max(x, 0), [x > 0]); the mask carries no gradient."""

    @property
    def name(self) -> str:
        return FORWARD_NAMES["ReLU"]

    @property
    def args(self) -> Dict:
        return {}

    def min_outputs(self) -> int:
        return 2

    def grad_depends_output_data(self, i, o) -> bool:
        return o == 1

    def grad_depends_input_data(self, i, j) -> bool:
        return False

    def setup_impl(self, inputs, outputs) -> None:
        outputs[0].reset_shape(inputs[0].shape, True)
        outputs[1].reset_shape(inputs[0].shape, True)

    def forward_impl(self, inputs, outputs) -> None:
        x = read(inputs[0].data)
        mask = outputs[1].data.get_data("w")
        np.greater(x, 0, out=mask)
        np.maximum(x, 0, out=outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            combine(inputs[0].grad, accum[0], [(read(outputs[0].grad), read(outputs[1].data))])


class _MaskedGradient(PythonFunction):
    """(dy, mask) -> dy * mask, for a mask that carries no gradient (ReLU's backward)."""

    @property
    def name(self) -> str:
        return "SecondOrderReLUBackward"

    @property
    def args(self) -> Dict:
        return {}

    def min_outputs(self) -> int:
        return 1

    def grad_depends_output_data(self, i, o) -> bool:
        return False

    def grad_depends_input_data(self, i, j) -> bool:
        return j == 1

    def setup_impl(self, inputs, outputs) -> None:
        outputs[0].reset_shape(inputs[0].shape, True)

    def forward_impl(self, inputs, outputs) -> None:
        np.multiply(read(inputs[0].data), read(inputs[1].data), out=outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            combine(inputs[0].grad, accum[0], [(read(outputs[0].grad), read(inputs[1].data))])


def _relu_backward(grad_inputs, inputs, input_shapes, outputs, output_shapes):
    """nn.grad's backward of :class:`_ReluForward`."""
    return [_MaskedGradient(context())(grad_inputs[0], outputs[1])]


def _build_max_pooling(function, args: List, training: bool):
    param = function.max_pooling_param
    x = args[0]
    kernel = tuple(int(k) for k in param.kernel.dim)
    stride = tuple(int(k) for k in param.stride.dim) or kernel
    pad = tuple(int(p) for p in param.pad.dim) or (0,) * len(kernel)
    if len(kernel) != 2 or stride != kernel or any(pad) or param.channel_last or x.ndim < 3:
        return None
    if x.size < _arrays.MIN_ELEMENTS:
        return None
    partial = any(n % k for n, k in zip(x.shape[-2:], kernel))
    if partial and not param.ignore_border:
        return None  # windows cut by the border
    y, mask = _MaxPoolForward(context(), kernel)(x, n_outputs=2)
    return (y,), (mask.apply(need_grad=False),)


class _Tiles:
    """An (..., H, W) array cut into the kh x kw windows of a pooling with stride = kernel;
    rows and columns past the last whole window are left out. Only views and slices with long
    inner loops: numpy is slow at reducing or broadcasting over axes of length 2."""

    def __init__(self, shape: Sequence[int], kernel: Tuple[int, int]) -> None:
        self.shape = tuple(shape)
        self.kernel = kernel
        self.lead = int(np.prod(shape[:-2]))
        self.out = (shape[-2] // kernel[0], shape[-1] // kernel[1])
        self.output_shape = self.shape[:-2] + self.out
        self.cropped = (self.out[0] * kernel[0], self.out[1] * kernel[1]) != self.shape[-2:]

    def rows(self, array: np.ndarray) -> np.ndarray:
        """View (L, Ho, kh, Wo*kw) of the windows' part of ``array``."""
        (kh, kw), (ho, wo) = self.kernel, self.out
        part = array.reshape((self.lead,) + self.shape[-2:])[:, : ho * kh, : wo * kw]
        return part.reshape(self.lead, ho, kh, wo * kw)

    def window_sums(self, array: np.ndarray) -> np.ndarray:
        """Sum over each window, shaped like the pooling's output."""
        rows = self.rows(array)
        total = rows[:, :, 0, :].copy()
        for i in range(1, self.kernel[0]):
            total += rows[:, :, i, :]
        columns = total.reshape(self.lead, self.out[0], self.out[1], self.kernel[1])
        sums = columns[..., 0].copy()
        for j in range(1, self.kernel[1]):
            sums += columns[..., j]
        return sums.reshape(self.output_shape)

    def spread_times(self, small: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
        """out = mask * (each element of ``small`` repeated over its window); 0 elsewhere."""
        (kh, kw), (ho, wo) = self.kernel, self.out
        repeated = np.empty((self.lead, ho, wo, kw), dtype=np.float32)
        flat = small.reshape(self.lead, ho, wo)
        for j in range(kw):
            repeated[..., j] = flat
        repeated = repeated.reshape(self.lead, ho, wo * kw)
        if self.cropped:
            out[...] = 0
        rows_out, rows_mask = self.rows(out), self.rows(mask)
        for i in range(kh):
            np.multiply(rows_mask[:, :, i, :], repeated, out=rows_out[:, :, i, :])


class _MaxPoolForward(PythonFunction):
    """x -> (max pooling of x, mask): stride = kernel, no padding; the mask is 1 at each
    window's maximum and 0 elsewhere, and carries no gradient.

    y and the mask come from nnabla's own MaxPooling (its forward, and its backward of ones),
    so the maxima are the ones it picks, ties included; so does this function's backward.
    """

    def __init__(self, ctx, kernel: Tuple[int, int]):
        import nnabla.function as function_classes

        super().__init__(ctx)
        self.kernel = tuple(kernel)
        self._nnabla = function_classes.MaxPooling(
            ctx, self.kernel, self.kernel, True, (0,) * len(self.kernel), False
        )

    @property
    def name(self) -> str:
        return FORWARD_NAMES["MaxPooling"]

    @property
    def args(self) -> Dict:
        return {"kernel": self.kernel}

    def min_outputs(self) -> int:
        return 2

    def grad_depends_output_data(self, i, o) -> bool:
        # The backward is nnabla's, with the positions it keeps itself; declaring the mask
        # makes nn.grad hand it to the backward's function, which reads it.
        return o == 1

    def grad_depends_input_data(self, i, j) -> bool:
        return False

    def setup_impl(self, inputs, outputs) -> None:
        import nnabla as nn

        self._x = nn.Variable(inputs[0].shape, need_grad=True)
        self._y = nn.Variable(())
        self._nnabla.setup([self._x], [self._y])
        self._ones = nn.NdArray.from_numpy_array(np.ones(self._y.shape, np.float32))
        outputs[0].reset_shape(self._y.shape, True)
        outputs[1].reset_shape(inputs[0].shape, True)

    def forward_impl(self, inputs, outputs) -> None:
        self._x.data, self._y.data = inputs[0].data, outputs[0].data
        self._nnabla.forward([self._x], [self._y])
        # nnabla's backward of ones puts a 1 at the maximum of every window.
        self._x.grad, self._y.grad = outputs[1].data, self._ones
        self._nnabla.backward([self._x], [self._y], [False])

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            self._x.grad, self._y.grad = inputs[0].grad, outputs[0].grad
            self._nnabla.backward([self._x], [self._y], [accum[0]])


class _MaxPoolGradient(PythonFunction):
    """(dy, mask) -> dx = mask * dy repeated over each window (MaxPooling's backward, stride =
    kernel); its backward is the window sums of mask * g."""

    def __init__(self, ctx, kernel: Tuple[int, int]):
        super().__init__(ctx)
        self.kernel = tuple(kernel)

    @property
    def name(self) -> str:
        return "SecondOrderMaxPoolingBackward"

    @property
    def args(self) -> Dict:
        return {"kernel": self.kernel}

    def min_outputs(self) -> int:
        return 1

    def grad_depends_output_data(self, i, o) -> bool:
        return False

    def grad_depends_input_data(self, i, j) -> bool:
        return j == 1

    def setup_impl(self, inputs, outputs) -> None:
        self.tiles = _Tiles(inputs[1].shape, self.kernel)
        outputs[0].reset_shape(inputs[1].shape, True)

    def forward_impl(self, inputs, outputs) -> None:
        mask = read(inputs[1].data)
        self.tiles.spread_times(read(inputs[0].data), mask, outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            product = read(outputs[0].grad) * read(inputs[1].data)
            put(inputs[0].grad, self.tiles.window_sums(product), accum[0])


def _max_pooling_backward(grad_inputs, inputs, input_shapes, outputs, output_shapes, kernel):
    """nn.grad's backward of :class:`_MaxPoolForward`."""
    return [_MaxPoolGradient(context(), tuple(kernel))(grad_inputs[0], outputs[1])]
