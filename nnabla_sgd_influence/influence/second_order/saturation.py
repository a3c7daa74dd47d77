"""A loss or Log reading a Sigmoid's or Softmax's probabilities, built from the logits, so that
saturated outputs give the second-order pass finite values: training's own.

**The problem.** In float32 a confident output saturates: sigmoid(z) is exactly 1.0 above
z = 16.7 (exactly 0.0 below -88.7, where exp(-z) overflows), and a softmax probability is
exactly 0.0 once its logit trails the largest by about 104. nnabla's first-order backward
(C++, what training runs) clamps its denominators and gives a finite gradient there, often
exactly 0. The Python backward functions ``nn.grad`` builds the second-order graph from do
not: BinaryCrossEntropy's is ``dy (p - t) / (p (1 - p))``, 0/0 = NaN at p = 1; Log's is
``dy / p``, whose own backward ``-g dy / p^2`` overflows for p below about 1e-19 (so does the
``-log p_t`` of CategoricalCrossEntropy). One NaN in a step's pass reaches u and, through it,
every earlier step.

**What training computes.** FLT_MIN is the smallest normal float32. With p = sigmoid(z) in
float32, nnabla's Sigmoid -> BinaryCrossEntropy backward is, per element,

    dl/dz = (p - t) / max(p - p^2, FLT_MIN) * p (1 - p) = r (p - t),
    r = min(1, p (1 - p) / FLT_MIN),

and with p = softmax(z) along the class axis and e the one-hot target, Softmax ->
CategoricalCrossEntropy gives ``dl/dz_i = p_i (p_t - e_i) / max(p_t, FLT_MIN) = r (p - e)_i``
with r = min(1, p_t / FLT_MIN). r is 1 while p (1 - p), or p_t, is a normal float32, falls in
the subnormal band (b = [p (1 - p) < FLT_MIN], or [p_t < FLT_MIN]) and is 0 where p saturates:
there training's gradient is exactly 0, the row does not move the parameters, and removing it
changes nothing. The retrace linearizes the update training applied, so the pass takes this
gradient and its derivative (dr/dz = (1 - 2 p) r, or r (e - p), in the band; 0 elsewhere)::

    sigmoid:  h = r (p (1 - p) + b (p - t) (1 - 2 p))          per element
    softmax:  H = r (diag(p) - p p^T - b (p - e) (p - e)^T)    per row

rather than those of the exact-arithmetic loss, whose gradient at a wrongly saturated row is
+-1: that row would get a large score where removing it changes nothing.

**How the pass gets them.** The pass needs a row loss's value, gradient and curvature at the
current logits z0 only (it builds ``G = dL/dtheta`` and differentiates ``<v, G>`` once more).
From a copy of z that carries no gradient the forward computes p, r, b and nnabla's own loss
value l0, constants of the graph. The sigmoid is built as its second-order Taylor model in
d = z - z0 (0 in the forward)::

    l~(z) = l0 + d (g0 + h d / 2),   g0 = r (p - t)

(the band lies below p = 1e-38, where 1 - 2 p is 1 in float32, so h = r (p (1 - p) + b (p - t))).

The softmax's r (p - e) is itself a gradient: of -log p_t(z) while p_t is a normal float32, and
of -p_t(z) / FLT_MIN in the band, since grad p_t = p_t (e - p). So it is built as::

    l~(z) = l0 + [psi(z)] - psi(z),   psi(z) = a log p_t(z) + b p_t(z) / FLT_MIN

with the constants a = [p_t >= FLT_MIN] and b = [0 < p_t < FLT_MIN] (psi is constant once
p_t is 0) and [psi(z)] a copy of psi's value that carries no gradient; log p_t(z) is
log_softmax(z)_t and p_t(z) / FLT_MIN is exp(min(log_softmax(z)_t - log FLT_MIN, 0)), so that
no value near 1 / FLT_MIN meets a gradient, where a product could overflow. The curvature of
-p_t / FLT_MIN is r (diag(p) - p p^T - (p - e)(p - e)^T), H in the band. At z0 both forms give
l0, g0 and h (H), and every term is finite at any logit. LogSoftmax and Exp keep the
softmax's pass at a few more functions than the layers as nnabla builds them (a Taylor form
of H takes twice as many, most of a small model's pass).

**Log of a probability** (Sigmoid -> Log, Softmax -> Log) is built as LogSigmoid and
LogSoftmax of the logits. Training's Log backward divides by p with no clamp, so wherever its
gradient is finite (p > 0) it equals theirs, ``1 - p`` and ``e_i - p``, whose derivatives are
finite at every logit.

SigmoidCrossEntropy and SoftmaxCrossEntropy take logits already: their backward functions
have no such division (SoftmaxCrossEntropy is rewritten for another reason, in
:mod:`.equivalents`).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

from .equivalents import FLT_MIN, one_hot_mask, positive_axis

LOG_FLT_MIN = math.log(FLT_MIN)


def _frozen(x):
    """A copy of ``x`` that carries no gradient (z0, where the derivatives are taken)."""
    import nnabla.functions as F

    return F.identity(x).apply(need_grad=False)


def _saturation(probability):
    """(r, b): r = min(1, probability / FLT_MIN), b = [probability < FLT_MIN]."""
    import nnabla.functions as F

    ratio = F.minimum_scalar(F.mul_scalar(probability, 1.0 / FLT_MIN), 1.0)
    return ratio, F.less_scalar(probability, FLT_MIN)


def sigmoid_binary_cross_entropy(z, target):
    """BinaryCrossEntropy(Sigmoid(z), target) with training's gradient and its derivative:
    l0 + d (g0 + h d / 2), d = z - z0 (see the module docstring)."""
    import nnabla.functions as F

    z0 = _frozen(z)
    p = F.sigmoid(z0)
    slope = p * F.r_sub_scalar(p, 1.0)  # p (1 - p)
    ratio, band = _saturation(slope)
    error = p - target
    # The band lies below p = 1e-38, where 1 - 2 p is 1: h = r (p (1 - p) + b (p - t)).
    half_curvature = F.mul_scalar(ratio * (slope + band * error), 0.5)
    d = z - z0
    return F.binary_cross_entropy(p, target) + d * (ratio * error + half_curvature * d)


def softmax_categorical_cross_entropy(z, target, axis: int):
    """CategoricalCrossEntropy(Softmax(z)) along ``axis`` with training's gradient and its
    derivative: l0 + [psi(z)] - psi(z) (see the module docstring)."""
    import nnabla.functions as F

    axis = positive_axis(axis, z.ndim)
    p = F.softmax(_frozen(z), axis=axis)
    mask = one_hot_mask(z, target, axis)
    picked = F.sum(p * mask, axis=axis, keepdims=True)  # p_t
    normal = F.greater_equal_scalar(picked, FLT_MIN)  # a
    band = F.greater_scalar(picked, 0.0) - normal  # b = [0 < p_t < FLT_MIN]
    psi = _psi(z, normal * mask, band * mask, axis)
    return F.categorical_cross_entropy(p, target, axis=axis) + _frozen(psi) - psi


def _psi(z, normal, band, axis: int):
    """a log p_t + b p_t / FLT_MIN of softmax(z), summed along ``axis`` (``normal`` and
    ``band`` are a and b times the one-hot target); where p >= FLT_MIN, b is 0 and the clamp
    of p / FLT_MIN at 1 changes nothing."""
    import nnabla.functions as F

    log_p = F.log_softmax(z, axis=axis)
    scaled = F.exp(F.minimum_scalar(F.add_scalar(log_p, -LOG_FLT_MIN), 0.0))  # p / FLT_MIN
    return F.sum(normal * log_p + band * scaled, axis=axis, keepdims=True)


def _sigmoid_then_binary_cross_entropy(activation, activation_args, loss, loss_args):
    return sigmoid_binary_cross_entropy(activation_args[0], loss_args[1])


def _softmax_then_categorical_cross_entropy(activation, activation_args, loss, loss_args):
    axis = int(loss.categorical_cross_entropy_param.axis)
    z = activation_args[0]
    if positive_axis(int(activation.softmax_param.axis), z.ndim) != positive_axis(axis, z.ndim):
        return None  # not a probability along the loss's class axis: built as usual
    return softmax_categorical_cross_entropy(z, loss_args[1], axis)


def _sigmoid_then_log(activation, activation_args, log, log_args):
    import nnabla.functions as F

    return F.log_sigmoid(activation_args[0])


def _softmax_then_log(activation, activation_args, log, log_args):
    import nnabla.functions as F

    return F.log_softmax(activation_args[0], axis=int(activation.softmax_param.axis))


# (activation type, type of the layer that reads its output) -> builder(activation function,
# its inputs, the reading function, its inputs) -> the reading layer's output, or None when
# the pair is to be built as usual.
SATURATING_PAIRS: Dict[Tuple[str, str], Callable[[object, Sequence, object, Sequence], object]] = {
    ("Sigmoid", "BinaryCrossEntropy"): _sigmoid_then_binary_cross_entropy,
    ("Softmax", "CategoricalCrossEntropy"): _softmax_then_categorical_cross_entropy,
    ("Sigmoid", "Log"): _sigmoid_then_log,
    ("Softmax", "Log"): _softmax_then_log,
}
