"""Shared by the layers of :mod:`.fast_layers`: numpy views of nnabla arrays, per-channel sums, and
where the pass runs."""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

# Below this many elements (batch included) nnabla's own kernels are faster than a Python
# function, whose forward and backward calls cost about 40 us each; BatchNormalization's double
# backward is slower than that at any size.
MIN_ELEMENTS = 8192

# The names of this package's forward functions, which the backward registry is given.
FORWARD_NAMES = {
    "BatchNormalization": "SecondOrderBatchNormalization",
    "ReLU": "SecondOrderReLU",
    "MaxPooling": "SecondOrderMaxPooling",
}


def on_cpu() -> bool:
    """Whether the current context computes in float32 on the CPU (numpy can share its arrays)."""
    import nnabla as nn

    backends = nn.get_current_context().backend
    return bool(backends) and all(b == "cpu:float" for b in backends)


def context():
    import nnabla as nn

    return nn.get_current_context()


def f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def read(ndarray) -> np.ndarray:
    return ndarray.get_data("r")


def put(ndarray, value, accum: bool) -> None:
    """Write ``value`` into an nnabla array, or add it when ``accum``."""
    if accum:
        target = ndarray.get_data("rw")
        target += f32(value).reshape(target.shape)
    else:
        target = ndarray.get_data("w")
        target[...] = f32(value).reshape(target.shape)


def combine(ndarray, accum: bool, terms, offset=None) -> None:
    """``ndarray`` (+)= sum of tensor * coefficient over ``terms``, + ``offset``.

    Coefficients and the offset are per-channel arrays (or scalars) broadcast over the tensors.
    """
    out = ndarray.get_data("rw" if accum else "w")
    rest = list(terms)
    if not accum:
        tensor, coefficient = rest.pop(0)
        np.multiply(tensor, f32(coefficient), out=out)
    for tensor, coefficient in rest:
        out += tensor * f32(coefficient)
    if offset is not None:
        out += f32(offset)


class Reduction:
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
