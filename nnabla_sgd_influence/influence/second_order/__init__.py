"""How the second-order pass builds layers that nnabla cannot, or only slowly, differentiate twice.

* :mod:`.equivalents`: layers nnabla cannot differentiate twice, as layers that compute the same
  values and can be (DepthwiseConvolution as a grouped Convolution; CategoricalCrossEntropy and
  SoftmaxCrossEntropy at any shape, batch size 1 included). Always used.
* :mod:`.saturation`: a loss or Log reading a Sigmoid's or Softmax's probabilities, built from
  the logits with the gradient training's first-order backward has, so that saturated outputs
  give finite second-order values. Always used.
* :mod:`.fast_layers`: layers whose second order is slow in nnabla on the CPU, written in closed
  form with numpy and put together by :class:`SecondOrderLayers` (``fast_layers``; equal to
  nnabla's own to float32 rounding, and not used under cudnn): BatchNormalization on batch
  statistics (:mod:`.batch_norm`), ReLU and MaxPooling keeping their masks (:mod:`.masks`),
  Tanh, Sigmoid and Convolution's bias (:mod:`.elementwise`); :mod:`._arrays` holds what
  they share.
"""

from .equivalents import SECOND_ORDER_EQUIVALENTS
from .fast_layers import SecondOrderLayers, passing_interrupts
from .saturation import SATURATING_PAIRS

__all__ = [
    "SATURATING_PAIRS",
    "SECOND_ORDER_EQUIVALENTS",
    "SecondOrderLayers",
    "passing_interrupts",
]
