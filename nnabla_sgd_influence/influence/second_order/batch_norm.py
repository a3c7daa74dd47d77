"""BatchNormalization with batch statistics, its backward and that backward's own, in closed
form (the derivation is in :mod:`.fast_layers`)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from nnabla.function import PythonFunction

from ._arrays import FORWARD_NAMES, Reduction, combine, context, f32, put, read


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
        context(),
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
        self.reduce = Reduction(shape, self.kept)
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
        s = f32(1.0 / np.sqrt(variance.astype(np.float64) + self.eps))
        outputs[2].data.get_data("w")[...] = s
        xhat = outputs[1].data.get_data("w")
        np.subtract(read(inputs[0].data), mean, out=xhat)
        xhat *= s

    def _gamma(self, inputs):
        if self.gamma_index is None:
            return np.float32(1.0)
        return read(inputs[self.gamma_index].data).reshape(self.reduce.shape)

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        reduce = self.reduce
        g_y = read(outputs[0].grad)
        xhat = read(outputs[1].data)
        sum_g_y = reduce.sum(g_y)
        dot_g_y = reduce.dot(g_y, xhat)
        if self.beta_index is not None and propagate_down[self.beta_index]:
            put(inputs[self.beta_index].grad, sum_g_y, accum[self.beta_index])
        if self.gamma_index is not None and propagate_down[self.gamma_index]:
            put(inputs[self.gamma_index].grad, dot_g_y, accum[self.gamma_index])
        if not propagate_down[0]:
            return
        g_xhat = read(outputs[1].grad)
        g_s = read(outputs[2].grad).astype(np.float64)
        s = read(outputs[2].data).astype(np.float64)
        gamma = np.asarray(self._gamma(inputs), dtype=np.float64)
        n = reduce.count
        # t = gamma g_y + g_xhat;  g_x = s (t - mean(t) - xhat mean(t xhat)) - (s^2/N) g_s xhat
        mean_t = (gamma * sum_g_y + reduce.sum(g_xhat)) / n
        mean_t_xhat = (gamma * dot_g_y + reduce.dot(g_xhat, xhat)) / n
        combine(
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
        self.reduce = Reduction(shape, self.kept)
        outputs[0].reset_shape(shape, True)
        for output, parameter_shape in zip(outputs[1:], self.parameter_shapes):
            output.reset_shape(parameter_shape, True)

    def _gamma(self, inputs) -> np.ndarray:
        if not self.has_gamma:
            return np.ones(self.reduce.shape)
        return read(inputs[3].data).reshape(self.reduce.shape).astype(np.float64)

    def forward_impl(self, inputs, outputs) -> None:
        reduce = self.reduce
        dy = read(inputs[0].data)
        xhat = read(inputs[1].data)
        s = read(inputs[2].data).astype(np.float64)
        sum_dy = reduce.sum(dy)
        dot_dy = reduce.dot(dy, xhat)
        self.m1 = sum_dy / reduce.count
        self.m2 = dot_dy / reduce.count
        c = self._gamma(inputs) * s
        combine(outputs[0].data, False, [(dy, c), (xhat, -c * self.m2)], offset=-c * self.m1)
        rest = iter(outputs[1:])
        if self.has_beta:
            put(next(rest).data, sum_dy, False)
        if self.has_gamma:
            put(next(rest).data, dot_dy, False)

    def backward_impl(self, inputs, outputs, propagate_down, accum) -> None:
        reduce = self.reduce
        n = reduce.count
        dy = read(inputs[0].data)
        xhat = read(inputs[1].data)
        s = read(inputs[2].data).astype(np.float64)
        gamma = self._gamma(inputs)
        c = gamma * s
        a = read(outputs[0].grad)
        rest = iter(outputs[1:])
        a_beta = read(next(rest).grad).reshape(reduce.shape) if self.has_beta else 0.0
        a_gamma = read(next(rest).grad).reshape(reduce.shape) if self.has_gamma else 0.0
        a_beta = np.asarray(a_beta, dtype=np.float64)
        a_gamma = np.asarray(a_gamma, dtype=np.float64)
        mean_a = reduce.sum(a) / n
        mean_a_xhat = reduce.dot(a, xhat) / n
        m1, m2 = self.m1, self.m2
        if propagate_down[0]:
            combine(
                inputs[0].grad,
                accum[0],
                [(a, c), (xhat, a_gamma - c * mean_a_xhat)],
                offset=a_beta - c * mean_a,
            )
        if propagate_down[1]:
            combine(inputs[1].grad, accum[1], [(a, -c * m2), (dy, a_gamma - c * mean_a_xhat)])
        need_total = propagate_down[2] or (self.has_gamma and propagate_down[3])
        if not need_total:
            return
        total = n * (reduce.dot(a, dy) / n - mean_a * m1 - mean_a_xhat * m2)  # sum(a P(dy))
        if propagate_down[2]:
            put(inputs[2].grad, gamma * total, accum[2])
        if self.has_gamma and propagate_down[3]:
            put(inputs[3].grad, s * total, accum[3])


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
    backward = _BatchNormBackward(context(), kept, has_beta, has_gamma, parameters)
    args = [dy, xhat, s] + ([inputs[-1]] if has_gamma else [])
    grads = backward(*args, n_outputs=1 + has_beta + has_gamma)
    return list(grads) if isinstance(grads, tuple) else [grads]
