"""Faster second-order layers on the CPU, put together, and their derivation: BatchNormalization
(:mod:`.batch_norm`), ReLU and MaxPooling (:mod:`.masks`), Tanh, Sigmoid and Convolution's bias
gradient (:mod:`.elementwise`).

The pass (:mod:`..hvp`) builds G = dL/dtheta with ``nn.grad`` and runs one backward pass of
s = <v, G>, so every layer appears three times: its forward, its backward (built by ``nn.grad``
from nnabla's registry of backward functions) and the backward of that backward. For three
common layers nnabla's CPU versions of the last two are slow: BatchNormalization's double
backward is about 58 eager broadcast operations in Python per step, and the backward of ReLU
and MaxPooling recompute the mask and the positions of the maxima, with element-wise kernels
many times slower than numpy's. Here each of them is a pair of nnabla functions
written with numpy: a forward that also outputs what its backward needs, and a backward whose
own backward is written out in closed form. :class:`SecondOrderLayers`, this module's part,
builds the forwards (the graph builder calls its ``build`` per layer) and makes ``nn.grad``
find the backwards.

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

Below :data:`._arrays.MIN_ELEMENTS` elements nnabla's small kernels win and the layers below
stay nnabla's.

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
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ...nnp.compat import backward_function_registry
from ._arrays import FORWARD_NAMES, on_cpu
from .batch_norm import _batch_normalization_backward, _build_batch_normalization
from .elementwise import _convolution_backward, _slope_backward
from .masks import _build_max_pooling, _build_relu, _max_pooling_backward, _relu_backward


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
        if builder is None or not self.enabled or not on_cpu():
            return None
        built = builder(function, list(args), training)
        if built is None:
            return None
        outputs, extra = built
        self._kept.extend(extra)
        return outputs

    def __enter__(self) -> SecondOrderLayers:
        registry = backward_function_registry()
        if registry is None:  # an nnabla without the registry: its own layers throughout
            self.enabled = False
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
        registry = backward_function_registry()
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
