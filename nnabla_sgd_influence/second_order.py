"""BatchNormalization, ReLU and MaxPooling for the batched second-order pass, on the CPU.

The pass (:mod:`.hvp`) builds G = dL/dtheta with ``nn.grad`` and runs one backward pass of
s = <v, G>, so every layer appears three times: its forward, its backward (built by ``nn.grad``
from nnabla's registry of backward functions) and the backward of that backward. For three
common layers nnabla's CPU versions of the last two are slow: BatchNormalization's double
backward is about 58 eager broadcast operations in Python per step, and the backward of ReLU
and MaxPooling recompute the mask and the positions of the maxima, with element-wise kernels
many times slower than numpy's. Here each of them is a pair of nnabla functions
written with numpy: a forward that also outputs what its backward needs, and a backward whose
own backward is written out in closed form. :class:`SecondOrderLayers` builds the forwards
(the graph builder calls its ``build`` per layer) and makes ``nn.grad`` find the backwards.

BatchNormalization with batch statistics (the training network). Per channel (every index
of the kept ``axes``), with N the number of elements reduced over and means over them::

    mu = mean(x),  s = (mean((x - mu)^2) + eps)^(-1/2),  xhat = (x - mu) s,  y = gamma xhat + beta

The forward outputs y, xhat and s; y is nnabla's own BatchNormalization (bit for bit what the
training network computes, so that no unit of a following ReLU switches on rounding), xhat
and s are made once from the batch mean and variance it used. With
P(t) = t - mean(t) - xhat mean(t xhat), the Jacobians are d xhat = s P(dx) and
ds = -s^2 mean(xhat dx), so the forward's backward, given the gradients g_y, g_xhat and g_s
of its three outputs, is::

    g_beta = sum(g_y),  g_gamma = sum(g_y xhat)
    g_x = s P(gamma g_y + g_xhat) - (s^2 / N) g_s xhat

The backward, a function of (dy, xhat, s, gamma) on its own (x enters through xhat and s)::

    dbeta = sum(dy) = N m1,   dgamma = sum(dy xhat) = N m2,
    dx = gamma s (dy - m1 - m2 xhat)

Its backward, for incoming gradients a (of dx), a_beta and a_gamma, with the per-channel
means ma = mean(a), mx = mean(a xhat), md = mean(a dy) and A = N (md - ma m1 - mx m2)
(= sum(a P(dy))), c = gamma s::

    g_dy    = c a + (a_gamma - c mx) xhat + (a_beta - c ma)
    g_xhat  = -c m2 a + (a_gamma - c mx) dy
    g_s     = gamma A
    g_gamma = s A

Chained through the forward's backward this is the directional derivative of
BatchNormalization's backward. Per layer and step: nnabla's forward, then 9 per-channel
reductions and about 20 whole-tensor multiply-adds in numpy, where nnabla's double backward
runs about 58 eager broadcast operations and recomputes the statistics from x. The model's
running mean and variance are neither read nor written (the forward's are private arrays):
with batch statistics the output does not depend on them.

Below MIN_ELEMENTS elements nnabla's small kernels win and the layers below stay nnabla's.

ReLU: the forward outputs y = max(x, 0) and the mask [x > 0] (no gradient flows through the
mask, as in nnabla's own backward); dx = dy * mask and its backward g_dy = g * mask reuse it.

MaxPooling whose windows tile the input (stride = kernel, no padding, 2-D): the forward is
nnabla's, and its backward of ones gives the mask, 1 at each window's maximum (the element
nnabla picks, ties included); dx = mask * dy (dy repeated over each window) and its backward,
the window sums of mask * g, reuse it. nnabla would find the maxima again in each of them.

Tanh, Sigmoid and Convolution keep nnabla's forward; only their backward is built here (on the
CPU, inside :class:`SecondOrderLayers`): dx = dy * f'(y) with f' = 1 - y^2 or y (1 - y) as one
function whose backward is g_dy = g f'(y), g_y = g dy f''/f' (-2 y, 1 - 2 y), instead of four or
five of nnabla's element-wise functions each way; and Convolution's bias gradient (a sum over
all but the channel axis) as a numpy sum whose backward is a broadcast.

All of this runs only on the CPU (numpy on the arrays); under another context
``SecondOrderLayers.build`` returns None and the graph is nnabla's own, as for layer settings
not covered here.
"""

from __future__ import annotations

import contextlib
import string
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from nnabla.function import PythonFunction

# Below this many elements (batch included) nnabla's own kernels are faster than a Python
# function, whose forward and backward calls cost about 40 us each; BatchNormalization's double
# backward is slower than that at any size.
MIN_ELEMENTS = 8192

FORWARD_NAMES = {
    "BatchNormalization": "SecondOrderBatchNormalization",
    "ReLU": "SecondOrderReLU",
    "MaxPooling": "SecondOrderMaxPooling",
}


class SecondOrderLayers:
    """Builds BatchNormalization, ReLU and MaxPooling for the second-order graph, and lets
    ``nn.grad`` find their backward functions.

    Use it as a context manager around building the graph and its ``nn.grad``; pass
    :meth:`build` to the graph builder. Inside, nnabla's registry of backward functions knows
    this module's forward functions; on exit the registry is as it was.

    The forwards' extra outputs (xhat, s and the masks) are kept here until ``nn.grad`` has
    connected them to the backward functions that read them: nnabla holds a function's outputs
    only weakly, and an output that nothing refers to is recreated as a leaf, which would cut
    the gradient that flows back through xhat and s.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # False: nnabla's own layers and backward functions throughout
        self._kept: List = []
        self._previous: Optional[Dict[str, Callable]] = None

    def build(self, function, args: Sequence, training: bool) -> Optional[Tuple]:
        """The outputs of layer ``function`` (an nnabla_pb2.Function) on ``args``, built with
        this module's functions, or None when the layer is to be built as usual (another type,
        settings not covered, or a context other than the CPU)."""
        builder = _BUILDERS.get(function.type)
        if builder is None or not self.enabled or not _on_cpu():
            return None
        built = builder(function, list(args), training)
        if built is None:
            return None
        outputs, extra = built
        self._kept.extend(extra)
        return outputs

    def __enter__(self) -> SecondOrderLayers:
        from nnabla.backward_functions import registry

        if not self.enabled:
            return self
        added = {
            FORWARD_NAMES["BatchNormalization"]: _batch_normalization_backward,
            FORWARD_NAMES["ReLU"]: _relu_backward,
            FORWARD_NAMES["MaxPooling"]: _max_pooling_backward,
        }
        # nnabla's own layers whose forward stays nnabla's: on the CPU their backward is
        # built with this module's functions, elsewhere as nnabla builds it.
        for name, wrap in _WRAPPED_BACKWARDS.items():
            if name in registry:
                added[name] = wrap(registry[name])
        self._previous = {name: registry.get(name) for name in added}
        registry.update(added)
        return self

    def __exit__(self, *exc_info) -> None:
        from nnabla.backward_functions import registry

        for name, previous in (self._previous or {}).items():
            if previous is None:
                registry.pop(name, None)
            else:
                registry[name] = previous
        self._previous = None
        self._kept.clear()


@contextlib.contextmanager
def passing_interrupts() -> Iterator[None]:
    """Run a graph with this module's functions so that Ctrl-C (or the CLI's SIGTERM) stays a
    KeyboardInterrupt: raised inside a Python function's forward or backward, it comes out of
    nnabla as a SystemError caused by it."""
    try:
        yield
    except SystemError as error:
        cause: Optional[BaseException] = error
        while cause is not None:  # Python functions inside Python functions nest them
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from error
            cause = cause.__cause__ or cause.__context__
        raise


def _on_cpu() -> bool:
    """Whether the current context computes in float32 on the CPU (numpy can share its arrays)."""
    import nnabla as nn

    backends = nn.get_current_context().backend
    return bool(backends) and all(b == "cpu:float" for b in backends)


def _context():
    import nnabla as nn

    return nn.get_current_context()


# --------------------------------------------------------------------------------------
# Array helpers


def _f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _read(ndarray) -> np.ndarray:
    return ndarray.get_data("r")


def _put(ndarray, value, accum: bool) -> None:
    """Write ``value`` into an nnabla array, or add it when ``accum``."""
    if accum:
        target = ndarray.get_data("rw")
        target += _f32(value).reshape(target.shape)
    else:
        target = ndarray.get_data("w")
        target[...] = _f32(value).reshape(target.shape)


def _combine(ndarray, accum: bool, terms, offset=None) -> None:
    """``ndarray`` (+)= sum of tensor * coefficient over ``terms``, + ``offset``.

    Coefficients and the offset are per-channel arrays (or scalars) broadcast over the tensors.
    """
    out = ndarray.get_data("rw" if accum else "w")
    rest = list(terms)
    if not accum:
        tensor, coefficient = rest.pop(0)
        np.multiply(tensor, _f32(coefficient), out=out)
    for tensor, coefficient in rest:
        out += tensor * _f32(coefficient)
    if offset is not None:
        out += _f32(offset)


class _Reduction:
    """Sums over every axis but the kept ones (BatchNormalization's ``axes``): summed in
    float32 by einsum, returned as float64 arrays of the statistics' shape (size 1 on the
    reduced axes)."""

    def __init__(self, shape: Sequence[int], kept: Sequence[int]) -> None:
        letters = string.ascii_letters[: len(shape)]
        out = "".join(letters[a] for a in sorted(kept))
        self._sum = f"{letters}->{out}"
        self._dot = f"{letters},{letters}->{out}"
        self.shape = tuple(n if a in kept else 1 for a, n in enumerate(shape))
        self.count = int(np.prod([n for a, n in enumerate(shape) if a not in kept]))

    def sum(self, a: np.ndarray) -> np.ndarray:
        return np.einsum(self._sum, a).reshape(self.shape).astype(np.float64)

    def dot(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum(self._dot, a, b).reshape(self.shape).astype(np.float64)


# --------------------------------------------------------------------------------------
# BatchNormalization (batch statistics)


def _build_batch_normalization(function, args: List, training: bool):
    param = function.batch_normalization_param
    if not (training and param.batch_stat):
        return None  # running statistics: nnabla's own second order is cheap
    x = args[0]
    index = 1
    beta = gamma = None
    if not param.no_bias:
        beta, index = args[index], index + 1
    if not param.no_scale:
        gamma = args[index]
    kept = sorted({int(a) % x.ndim for a in param.axes} or {1})
    if len(kept) != 1:
        return None  # nnabla's BatchNormalization function takes one axis
    forward = _BatchNormForward(
        _context(),
        kept,
        float(param.decay_rate),
        float(param.eps),
        beta is not None,
        gamma is not None,
    )
    inputs = [v for v in (x, beta, gamma) if v is not None]
    y, xhat, s = forward(*inputs, n_outputs=3)
    return (y,), (xhat, s)


class _BatchNormForward(PythonFunction):
    """(x[, beta][, gamma]) -> (y, xhat, s), batch statistics; see the module docstring.

    y is computed by nnabla's own BatchNormalization, so that it equals the training network's
    bit for bit (a unit of the next ReLU that is within rounding of zero would otherwise switch);
    xhat and s are made from the batch mean and variance that nnabla used. Its running mean and
    variance here are private arrays: the model's are not touched.
    """

    def __init__(
        self,
        ctx,
        kept: Sequence[int],
        decay_rate: float,
        eps: float,
        has_beta: bool,
        has_gamma: bool,
    ):
        import nnabla.function as function_classes

        super().__init__(ctx)
        self.kept = list(kept)
        self.decay_rate = decay_rate
        self.eps = eps
        self.has_beta = has_beta
        self.has_gamma = has_gamma
        self.beta_index = 1 if has_beta else None
        self.gamma_index = (2 if has_beta else 1) if has_gamma else None
        self._nnabla = function_classes.BatchNormalization(
            ctx, self.kept, decay_rate, eps, True, not has_gamma, not has_beta
        )

    @property
    def name(self) -> str:
        return FORWARD_NAMES["BatchNormalization"]

    @property
    def args(self) -> Dict:
        return {
            "kept": self.kept,
            "decay_rate": self.decay_rate,
            "eps": self.eps,
            "has_beta": self.has_beta,
            "has_gamma": self.has_gamma,
        }

    def min_outputs(self) -> int:
        return 3

    def grad_depends_output_data(self, i, o) -> bool:
        return o in (1, 2)

    def grad_depends_input_data(self, i, j) -> bool:
        return j == self.gamma_index

    def setup_impl(self, inputs, outputs) -> None:
        import nnabla as nn

        shape = inputs[0].shape
        self.reduce = _Reduction(shape, self.kept)
        stat = self.reduce.shape
        # nnabla's function on variables that share our arrays, with private running statistics
        self._inputs = [nn.Variable(v.shape) for v in inputs]
        self._inputs += [
            nn.Variable.from_numpy_array(np.zeros(stat, np.float32)),
            nn.Variable.from_numpy_array(np.ones(stat, np.float32)),
        ]
        self._outputs = [nn.Variable(shape), nn.Variable(stat), nn.Variable(stat)]
        self._nnabla.setup(self._inputs, self._outputs)
        outputs[0].reset_shape(shape, True)
        outputs[1].reset_shape(shape, True)
        outputs[2].reset_shape(stat, True)

    def forward_impl(self, inputs, outputs) -> None:
        for mine, theirs in zip(self._inputs, inputs):
            mine.data = theirs.data
        self._outputs[0].data = outputs[0].data
        self._nnabla.forward(self._inputs, self._outputs)
        mean, variance = self._outputs[1].d, self._outputs[2].d
        s = _f32(1.0 / np.sqrt(variance.astype(np.float64) + self.eps))
        outputs[2].data.get_data("w")[...] = s
        xhat = outputs[1].data.get_data("w")
        np.subtract(_read(inputs[0].data), mean, out=xhat)
        xhat *= s

    def _gamma(self, inputs):
        if self.gamma_index is None:
            return np.float32(1.0)
        return _read(inputs[self.gamma_index].data).reshape(self.reduce.shape)

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        reduce = self.reduce
        g_y = _read(outputs[0].grad)
        xhat = _read(outputs[1].data)
        sum_g_y = reduce.sum(g_y)
        dot_g_y = reduce.dot(g_y, xhat)
        if self.beta_index is not None and propagate_down[self.beta_index]:
            _put(inputs[self.beta_index].grad, sum_g_y, accum[self.beta_index])
        if self.gamma_index is not None and propagate_down[self.gamma_index]:
            _put(inputs[self.gamma_index].grad, dot_g_y, accum[self.gamma_index])
        if not propagate_down[0]:
            return
        g_xhat = _read(outputs[1].grad)
        g_s = _read(outputs[2].grad).astype(np.float64)
        s = _read(outputs[2].data).astype(np.float64)
        gamma = np.asarray(self._gamma(inputs), dtype=np.float64)
        n = reduce.count
        # t = gamma g_y + g_xhat;  g_x = s (t - mean(t) - xhat mean(t xhat)) - (s^2/N) g_s xhat
        mean_t = (gamma * sum_g_y + reduce.sum(g_xhat)) / n
        mean_t_xhat = (gamma * dot_g_y + reduce.dot(g_xhat, xhat)) / n
        _combine(
            inputs[0].grad,
            accum[0],
            [(g_y, s * gamma), (g_xhat, s), (xhat, -s * mean_t_xhat - s * s * g_s / n)],
            offset=-s * mean_t,
        )


class _BatchNormBackward(PythonFunction):
    """(dy, xhat, s[, gamma]) -> (dx[, dbeta][, dgamma]); see the module docstring."""

    def __init__(self, ctx, kept: Sequence[int], has_beta: bool, has_gamma: bool, shapes):
        super().__init__(ctx)
        self.kept = list(kept)
        self.has_beta = has_beta
        self.has_gamma = has_gamma
        self.parameter_shapes = shapes  # of beta and gamma, as the forward's inputs have them

    @property
    def name(self) -> str:
        return "SecondOrderBatchNormalizationBackward"

    @property
    def args(self) -> Dict:
        return {"kept": self.kept, "has_beta": self.has_beta, "has_gamma": self.has_gamma}

    def min_outputs(self) -> int:
        return 1 + self.has_beta + self.has_gamma

    def grad_depends_output_data(self, i, o) -> bool:
        return False

    def grad_depends_input_data(self, i, j) -> bool:
        return True

    def setup_impl(self, inputs, outputs) -> None:
        shape = inputs[0].shape
        self.reduce = _Reduction(shape, self.kept)
        outputs[0].reset_shape(shape, True)
        for output, parameter_shape in zip(outputs[1:], self.parameter_shapes):
            output.reset_shape(parameter_shape, True)

    def _gamma(self, inputs) -> np.ndarray:
        if not self.has_gamma:
            return np.ones(self.reduce.shape)
        return _read(inputs[3].data).reshape(self.reduce.shape).astype(np.float64)

    def forward_impl(self, inputs, outputs) -> None:
        reduce = self.reduce
        dy = _read(inputs[0].data)
        xhat = _read(inputs[1].data)
        s = _read(inputs[2].data).astype(np.float64)
        sum_dy = reduce.sum(dy)
        dot_dy = reduce.dot(dy, xhat)
        self.m1 = sum_dy / reduce.count
        self.m2 = dot_dy / reduce.count
        c = self._gamma(inputs) * s
        _combine(outputs[0].data, False, [(dy, c), (xhat, -c * self.m2)], offset=-c * self.m1)
        rest = iter(outputs[1:])
        if self.has_beta:
            _put(next(rest).data, sum_dy, False)
        if self.has_gamma:
            _put(next(rest).data, dot_dy, False)

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        reduce = self.reduce
        n = reduce.count
        dy = _read(inputs[0].data)
        xhat = _read(inputs[1].data)
        s = _read(inputs[2].data).astype(np.float64)
        gamma = self._gamma(inputs)
        c = gamma * s
        a = _read(outputs[0].grad)
        rest = iter(outputs[1:])
        a_beta = _read(next(rest).grad).reshape(reduce.shape) if self.has_beta else 0.0
        a_gamma = _read(next(rest).grad).reshape(reduce.shape) if self.has_gamma else 0.0
        a_beta = np.asarray(a_beta, dtype=np.float64)
        a_gamma = np.asarray(a_gamma, dtype=np.float64)
        mean_a = reduce.sum(a) / n
        mean_a_xhat = reduce.dot(a, xhat) / n
        m1, m2 = self.m1, self.m2
        if propagate_down[0]:
            _combine(
                inputs[0].grad,
                accum[0],
                [(a, c), (xhat, a_gamma - c * mean_a_xhat)],
                offset=a_beta - c * mean_a,
            )
        if propagate_down[1]:
            _combine(inputs[1].grad, accum[1], [(a, -c * m2), (dy, a_gamma - c * mean_a_xhat)])
        need_total = propagate_down[2] or (self.has_gamma and propagate_down[3])
        if not need_total:
            return
        total = n * (reduce.dot(a, dy) / n - mean_a * m1 - mean_a_xhat * m2)  # sum(a P(dy))
        if propagate_down[2]:
            _put(inputs[2].grad, gamma * total, accum[2])
        if self.has_gamma and propagate_down[3]:
            _put(inputs[3].grad, s * total, accum[3])


def _batch_normalization_backward(
    grad_inputs,
    inputs,
    input_shapes,
    outputs,
    output_shapes,
    kept,
    decay_rate,
    eps,
    has_beta,
    has_gamma,
):
    """nn.grad's backward of :class:`_BatchNormForward`: (dx[, dbeta][, dgamma])."""
    dy = grad_inputs[0]
    xhat, s = outputs[1], outputs[2]  # gradients flow through both: they carry x
    parameters = [input_shapes[i] for i in range(1, 1 + has_beta + has_gamma)]
    backward = _BatchNormBackward(_context(), kept, has_beta, has_gamma, parameters)
    args = [dy, xhat, s] + ([inputs[-1]] if has_gamma else [])
    grads = backward(*args, n_outputs=1 + has_beta + has_gamma)
    return list(grads) if isinstance(grads, tuple) else [grads]


# --------------------------------------------------------------------------------------
# ReLU


def _build_relu(function, args: List, training: bool):
    if args[0].size < MIN_ELEMENTS:
        return None
    y, mask = _ReluForward(_context())(args[0], n_outputs=2)
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
        x = _read(inputs[0].data)
        mask = outputs[1].data.get_data("w")
        np.greater(x, 0, out=mask)
        np.maximum(x, 0, out=outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            _combine(inputs[0].grad, accum[0], [(_read(outputs[0].grad), _read(outputs[1].data))])


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
        np.multiply(_read(inputs[0].data), _read(inputs[1].data), out=outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            _combine(inputs[0].grad, accum[0], [(_read(outputs[0].grad), _read(inputs[1].data))])


def _relu_backward(grad_inputs, inputs, input_shapes, outputs, output_shapes):
    """nn.grad's backward of :class:`_ReluForward`."""
    return [_MaskedGradient(_context())(grad_inputs[0], outputs[1])]


# --------------------------------------------------------------------------------------
# MaxPooling, windows that tile the input


def _build_max_pooling(function, args: List, training: bool):
    param = function.max_pooling_param
    x = args[0]
    kernel = tuple(int(k) for k in param.kernel.dim)
    stride = tuple(int(k) for k in param.stride.dim) or kernel
    pad = tuple(int(p) for p in param.pad.dim) or (0,) * len(kernel)
    if len(kernel) != 2 or stride != kernel or any(pad) or param.channel_last or x.ndim < 3:
        return None
    if x.size < MIN_ELEMENTS:
        return None
    partial = any(n % k for n, k in zip(x.shape[-2:], kernel))
    if partial and not param.ignore_border:
        return None  # windows cut by the border
    y, mask = _MaxPoolForward(_context(), kernel)(x, n_outputs=2)
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
        mask = _read(inputs[1].data)
        self.tiles.spread_times(_read(inputs[0].data), mask, outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            product = _read(outputs[0].grad) * _read(inputs[1].data)
            _put(inputs[0].grad, self.tiles.window_sums(product), accum[0])


def _max_pooling_backward(grad_inputs, inputs, input_shapes, outputs, output_shapes, kernel):
    """nn.grad's backward of :class:`_MaxPoolForward`."""
    return [_MaxPoolGradient(_context(), tuple(kernel))(grad_inputs[0], outputs[1])]


# --------------------------------------------------------------------------------------
# Tanh and Sigmoid (nnabla's forward), and the bias of Convolution


class _SlopeGradient(PythonFunction):
    """(dy, y) -> dy * f'(x), with f' written in y = f(x): 1 - y^2 (tanh), y (1 - y)
    (sigmoid). Backward: g_dy = g f', g_y = g dy df'/dy (-2 y; 1 - 2 y)."""

    SLOPES = {
        "tanh": (lambda y: 1.0 - y * y, lambda y: -2.0 * y),
        "sigmoid": (lambda y: y * (1.0 - y), lambda y: 1.0 - 2.0 * y),
    }

    def __init__(self, ctx, kind: str):
        super().__init__(ctx)
        self.kind = kind
        self.slope, self.curvature = self.SLOPES[kind]

    @property
    def name(self) -> str:
        return "SecondOrderSlopeGradient"

    @property
    def args(self) -> Dict:
        return {"kind": self.kind}

    def min_outputs(self) -> int:
        return 1

    def grad_depends_output_data(self, i, o) -> bool:
        return False

    def grad_depends_input_data(self, i, j) -> bool:
        return True

    def setup_impl(self, inputs, outputs) -> None:
        outputs[0].reset_shape(inputs[0].shape, True)

    def forward_impl(self, inputs, outputs) -> None:
        slope = self.slope(_read(inputs[1].data))
        np.multiply(_read(inputs[0].data), slope, out=outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        g = _read(outputs[0].grad)
        y = _read(inputs[1].data)
        if propagate_down[0]:
            _combine(inputs[0].grad, accum[0], [(g, self.slope(y))])
        if propagate_down[1]:
            _combine(inputs[1].grad, accum[1], [(g * _read(inputs[0].data), self.curvature(y))])


def _slope_backward(kind: str):
    def wrap(original):
        def backward(grad_inputs, inputs, input_shapes, outputs, output_shapes, **args):
            if not _on_cpu() or outputs[0] is None or outputs[0].size < MIN_ELEMENTS:
                return original(grad_inputs, inputs, input_shapes, outputs, output_shapes, **args)
            return [_SlopeGradient(_context(), kind)(grad_inputs[0], outputs[0])]

        return backward

    return wrap


class _ChannelSum(PythonFunction):
    """dy -> its sums over every axis but ``kept`` (the bias gradient); backward: broadcast."""

    def __init__(self, ctx, kept: int, shape):
        super().__init__(ctx)
        self.kept = kept
        self.bias_shape = tuple(shape)

    @property
    def name(self) -> str:
        return "SecondOrderChannelSum"

    @property
    def args(self) -> Dict:
        return {"kept": self.kept}

    def min_outputs(self) -> int:
        return 1

    def grad_depends_output_data(self, i, o) -> bool:
        return False

    def grad_depends_input_data(self, i, j) -> bool:
        return False

    def setup_impl(self, inputs, outputs) -> None:
        self.reduce = _Reduction(inputs[0].shape, [self.kept])
        outputs[0].reset_shape(self.bias_shape, True)

    def forward_impl(self, inputs, outputs) -> None:
        _put(outputs[0].data, self.reduce.sum(_read(inputs[0].data)), False)

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        if propagate_down[0]:
            g = _read(outputs[0].grad).reshape(self.reduce.shape)
            target = inputs[0].grad.get_data("rw" if accum[0] else "w")
            if accum[0]:
                target += g
            else:
                target[...] = g


def _convolution_backward(original):
    """nnabla's backward of Convolution, with the bias gradient summed by numpy (nnabla's Sum
    and its backward take ~1.3 ms per pass on a 32x16x22x22 output)."""

    def backward(grad_inputs, inputs, input_shapes, outputs, output_shapes, base_axis=1, **args):
        grads = original(
            grad_inputs, inputs, input_shapes, outputs, output_shapes, base_axis=base_axis, **args
        )
        if len(grads) != 3 or grads[2] is None or not _on_cpu():
            return grads
        if grad_inputs[0].size < MIN_ELEMENTS:
            return grads
        dy = grad_inputs[0]
        kept = dy.ndim - 1 if args.get("channel_last") else base_axis % dy.ndim
        bias = _ChannelSum(_context(), kept, input_shapes[2])(dy)
        return grads[0], grads[1], bias

    return backward


_WRAPPED_BACKWARDS: Dict[str, Callable] = {
    "Tanh": _slope_backward("tanh"),
    "Sigmoid": _slope_backward("sigmoid"),
    "Convolution": _convolution_backward,
}


_BUILDERS: Dict[str, Callable] = {
    "BatchNormalization": _build_batch_normalization,
    "ReLU": _build_relu,
    "MaxPooling": _build_max_pooling,
}
