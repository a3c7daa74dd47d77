"""A float64 replay of SGD-Influence for chains of Affine and Tanh layers, written with numpy
alone: the reference the saturated-output tests compare the package's pass and trials with.

It reads the model's layer list and parameter values, and nothing else of the package: it
retrains with plain SGD (the samples' solver) in float64, takes per-row gradients by hand-written
backpropagation and Hessian-vector products by Pearlmutter's R-operator (forward-mode
derivative of the backward pass), and walks the steps back as Hara et al.'s Algorithm 2.

The head is Sigmoid -> BinaryCrossEntropy or Softmax -> CategoricalCrossEntropy. With
``saturation="float32"`` its gradient is the one float32 training applies: r (p - t), where
r = 0 once the float32 output saturates (sigmoid exactly 0 or 1, target probability exactly 0)
and r = p (1 - p) / FLT_MIN (p_t / FLT_MIN) in the subnormal band; the curvature is that
gradient's derivative. With ``saturation="none"`` the head is exact float64 arithmetic (r = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

FLT_MIN = float(np.finfo(np.float32).tiny)


@dataclass
class Layer:
    kind: str  # "affine" or "tanh"
    weight: Optional[str] = None
    bias: Optional[str] = None


def _chain(model) -> Tuple[List[Layer], str]:
    """The model's training network as Affine/Tanh layers and its head."""
    network = model.network(model.train_network)
    layers: List[Layer] = []
    head = None
    for function in network.function:
        if function.type == "Affine":
            layers.append(Layer("affine", function.input[1], function.input[2]))
        elif function.type == "Tanh":
            layers.append(Layer("tanh"))
        elif function.type in ("Sigmoid", "Softmax"):
            head = function.type.lower()
        elif function.type not in ("BinaryCrossEntropy", "CategoricalCrossEntropy"):
            raise ValueError(f"the float64 reference has no layer {function.type}")
    if head is None:
        raise ValueError("the float64 reference needs a Sigmoid or Softmax head")
    return layers, head


def _sigmoid32(z: np.ndarray) -> np.ndarray:
    """float32 sigmoid as 1 / (1 + exp(-z)): exactly 0 or 1 where float32 saturates."""
    with np.errstate(over="ignore"):
        z32 = z.astype(np.float32)
        return (np.float32(1) / (np.float32(1) + np.exp(-z32))).astype(np.float64)


def _softmax(z: np.ndarray, dtype) -> np.ndarray:
    z = z.astype(dtype)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float64)


class Float64Chain:
    """Per-row gradients, Hessian-vector sums, retraining and the retrace, in float64."""

    def __init__(self, model, saturation: str = "float32") -> None:
        if saturation not in ("float32", "none"):
            raise ValueError(saturation)
        self.layers, self.head = _chain(model)
        self.names = list(model.trainable)
        self.shapes = [model.parameters[n].shape for n in self.names]
        self.theta0 = self.pack({n: model.parameters[n] for n in self.names})
        self.saturation = saturation
        self.lr = float(model.solver.hyper_parameters["lr"])

    # ------------------------------------------------------------------ parameters

    def pack(self, arrays) -> np.ndarray:
        return np.concatenate([np.asarray(arrays[n], np.float64).ravel() for n in self.names])

    def unpack(self, flat: np.ndarray) -> dict:
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape))
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out

    # ------------------------------------------------------------------ the head

    def _head(self, z: np.ndarray, t: np.ndarray):
        """(gradient dl/dz per row, a function applying the curvature to dz) at logits z."""
        if self.head == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-z))
            q = p * (1.0 - p)
            r, band = self._ratio(q, _sigmoid32(z) * (1.0 - _sigmoid32(z)))
            error = p - t
            h = r * (q + band * error * (1.0 - 2.0 * p))
            return r * error, lambda dz: h * dz
        p = _softmax(z, np.float64)
        e = np.zeros_like(p)
        e[np.arange(len(z)), t[:, 0].astype(int)] = 1.0
        picked = (p * e).sum(axis=1, keepdims=True)
        picked32 = (_softmax(z, np.float32) * e).sum(axis=1, keepdims=True)
        r, band = self._ratio(picked, picked32)
        error = p - e

        def curvature(dz):
            pd = (p * dz).sum(axis=1, keepdims=True)
            ed = (error * dz).sum(axis=1, keepdims=True)
            return r * (p * dz - p * pd - band * error * ed)

        return r * error, curvature

    def _ratio(self, value: np.ndarray, value32: np.ndarray):
        """(r, band) for a probability term ``value`` (float64) and its float32 value."""
        if self.saturation == "none":
            return np.ones_like(value), np.zeros_like(value)
        r = np.where(value32 == 0.0, 0.0, np.minimum(1.0, value / FLT_MIN))
        return r, ((r > 0.0) & (r < 1.0)).astype(np.float64)

    # ------------------------------------------------------------------ one batch

    def _forward(self, params, x):
        values = [x]
        for layer in self.layers:
            a = values[-1]
            if layer.kind == "affine":
                values.append(a.reshape(len(a), -1) @ params[layer.weight] + params[layer.bias])
            else:
                values.append(np.tanh(a))
        return values

    def logits(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._forward(self.unpack(theta), x.astype(np.float64))[-1]

    def row_gradients(self, theta: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(rows, parameters): each row's gradient of its loss."""
        params = self.unpack(theta)
        values = self._forward(params, x.astype(np.float64))
        delta, _ = self._head(values[-1], t)
        grads = {}
        for index in range(len(self.layers) - 1, -1, -1):
            layer, a = self.layers[index], values[index]
            if layer.kind == "affine":
                grads[layer.weight] = a[:, :, None] * delta[:, None, :]
                grads[layer.bias] = delta
                delta = delta @ params[layer.weight].T
            else:
                delta = delta * (1.0 - values[index + 1] ** 2)
        return np.concatenate([grads[n].reshape(len(x), -1) for n in self.names], axis=1)

    def hessian_vector(self, theta, x, t, v) -> np.ndarray:
        """sum over rows of H_i v, by the R-operator."""
        params, direction = self.unpack(theta), self.unpack(v)
        values = self._forward(params, x.astype(np.float64))
        rvalues = [np.zeros_like(values[0])]
        for index, layer in enumerate(self.layers):
            a, ra = values[index], rvalues[index]
            if layer.kind == "affine":
                w = params[layer.weight]
                rvalues.append(
                    ra @ w + a @ direction[layer.weight] + direction[layer.bias][None, :]
                )
            else:
                rvalues.append((1.0 - values[index + 1] ** 2) * ra)
        delta, curvature = self._head(values[-1], t)
        rdelta = curvature(rvalues[-1])
        out = {}
        for index in range(len(self.layers) - 1, -1, -1):
            layer, a, ra = self.layers[index], values[index], rvalues[index]
            if layer.kind == "affine":
                w = params[layer.weight]
                out[layer.weight] = ra.T @ delta + a.T @ rdelta
                out[layer.bias] = rdelta.sum(axis=0)
                delta, rdelta = delta @ w.T, rdelta @ w.T + delta @ direction[layer.weight].T
            else:
                h, rh = values[index + 1], rvalues[index + 1]
                delta, rdelta = (
                    delta * (1.0 - h**2),
                    rdelta * (1.0 - h**2) - delta * 2.0 * h * rh,
                )
        return self.pack(out)

    # ------------------------------------------------------------------ the algorithm

    def retrace(
        self,
        train: Tuple[np.ndarray, np.ndarray],
        val: Tuple[np.ndarray, np.ndarray],
        steps: Sequence[np.ndarray],
        mode: str,
    ) -> np.ndarray:
        """SGD-Influence of every training row: retrain on ``steps`` (row indices per step)
        with plain SGD from the model's parameters, then walk back (Algorithm 2)."""
        (x, t), (xv, tv) = train, val
        theta = self.theta0.copy()
        before = []
        for rows in steps:
            before.append(theta.copy())
            theta = theta - self.lr * self.row_gradients(theta, x[rows], t[rows]).mean(axis=0)
        u = self.row_gradients(theta, xv, tv).mean(axis=0)
        scores = np.zeros(len(x))
        for index in range(len(steps) - 1, -1, -1):
            rows = steps[index]
            at = before[index] if mode == "exact" else theta
            step = self.lr / len(rows)
            scores[rows] += step * (self.row_gradients(at, x[rows], t[rows]) @ u)
            u = u - step * self.hessian_vector(at, x[rows], t[rows], u)
        return scores


def batch_rows(n_rows: int, batch_size: int, seed: int) -> List[np.ndarray]:
    """One epoch's batches as the plugins shuffle them (a permutation by the trial's seed)."""
    order = np.random.RandomState(seed).permutation(n_rows)
    return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]


def arrays(dataset, model) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of every row of a loaded dataset, as float64."""
    batch = dataset.batch(np.arange(len(dataset)))
    (inputs,) = [d.variable_name for d in model.data_variables if not d.is_label]
    (targets,) = [d.variable_name for d in model.data_variables if d.is_label]
    return batch[inputs].astype(np.float64), batch[targets].astype(np.float64)
