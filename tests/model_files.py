"""Model files for tests: a tiny NNC-style model with a chosen middle layer, random rows for
it, and a copy of an ``.nnp`` with its network text edited."""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np


def rewrite_nntxt(source: Path, target: Path, edit) -> Path:
    """A copy of the .nnp ``source`` at ``target`` with its network text passed through ``edit``."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".nntxt"):
                data = edit(data.decode()).encode()
            dst.writestr(item.filename, data)
    return target


MIDDLE_LAYERS = {
    "DepthwiseConvolution": """function { name: "DW" type: "DepthwiseConvolution" input: "Input"
    input: "DW/W" input: "DW/b" output: "DW" depthwise_convolution_param { base_axis: 1
    pad { dim: 0 dim: 0 } stride { dim: 1 dim: 1 } dilation { dim: 1 dim: 1 } multiplier: 1 } }
  function { name: "Tanh" type: "Tanh" input: "DW" output: "Tanh" }""",
    # Flip's backward cannot be differentiated again in nnabla.
    "Flip": """function { name: "DW" type: "Convolution" input: "Input" input: "DW/W4"
    input: "DW/b" output: "DW" convolution_param { base_axis: 1 group: 2
    pad { dim: 0 dim: 0 } stride { dim: 1 dim: 1 } dilation { dim: 1 dim: 1 } } }
  function { name: "Mirror" type: "Flip" input: "DW" output: "Mirror" flip_param { axes: 3 } }
  function { name: "Tanh" type: "Tanh" input: "Mirror" output: "Tanh" }""",
}


def write_tiny_model(path: Path, middle: str) -> None:
    """A tiny NNC-style model: Input -> ``middle`` -> Tanh -> Affine -> Softmax -> loss."""
    text = """
network {
  name: "Main" batch_size: 4
  variable { name: "Input" type: "Buffer" shape { dim: -1 dim: 2 dim: 6 dim: 6 } }
  variable { name: "DW/W" type: "Parameter" shape { dim: 2 dim: 3 dim: 3 } }
  variable { name: "DW/W4" type: "Parameter" shape { dim: 2 dim: 1 dim: 3 dim: 3 } }
  variable { name: "DW/b" type: "Parameter" shape { dim: 2 } }
  variable { name: "Affine/W" type: "Parameter" shape { dim: 32 dim: 3 } }
  variable { name: "Affine/b" type: "Parameter" shape { dim: 3 } }
  variable { name: "CategoricalCrossEntropy_T" type: "Buffer" shape { dim: -1 dim: 1 } }
  variable { name: "DW" type: "Buffer" shape { dim: -1 dim: 2 dim: 4 dim: 4 } }
  variable { name: "Mirror" type: "Buffer" shape { dim: -1 dim: 2 dim: 4 dim: 4 } }
  variable { name: "Tanh" type: "Buffer" shape { dim: -1 dim: 2 dim: 4 dim: 4 } }
  variable { name: "Affine" type: "Buffer" shape { dim: -1 dim: 3 } }
  variable { name: "Softmax" type: "Buffer" shape { dim: -1 dim: 3 } }
  variable { name: "CategoricalCrossEntropy" type: "Buffer" shape { dim: -1 dim: 1 } }
  MIDDLE
  function { name: "Affine" type: "Affine" input: "Tanh" input: "Affine/W" input: "Affine/b"
    output: "Affine" affine_param { base_axis: 1 } }
  function { name: "Softmax" type: "Softmax" input: "Affine" output: "Softmax"
    softmax_param { axis: 1 } }
  function { name: "CategoricalCrossEntropy" type: "CategoricalCrossEntropy" input: "Softmax"
    input: "CategoricalCrossEntropy_T" output: "CategoricalCrossEntropy"
    categorical_cross_entropy_param { axis: 1 } }
}
optimizer {
  name: "Optimizer" network_name: "Main" dataset_name: "Training" update_interval: 1
  solver { type: "Sgd" sgd_param { lr: 0.1 } }
  data_variable { variable_name: "Input" data_name: "x" }
  data_variable { variable_name: "CategoricalCrossEntropy_T" data_name: "y" }
  loss_variable { variable_name: "CategoricalCrossEntropy" }
  parameter_variable { variable_name: "DW/W" learning_rate_multiplier: 1 }
  parameter_variable { variable_name: "DW/W4" learning_rate_multiplier: 1 }
  parameter_variable { variable_name: "DW/b" learning_rate_multiplier: 1 }
  parameter_variable { variable_name: "Affine/W" learning_rate_multiplier: 1 }
  parameter_variable { variable_name: "Affine/b" learning_rate_multiplier: 1 }
}
""".replace("MIDDLE", middle)
    rng = np.random.RandomState(0)
    shapes = {
        "DW/W": (2, 3, 3),
        "DW/W4": (2, 1, 3, 3),
        "DW/b": (2,),
        "Affine/W": (32, 3),
        "Affine/b": (3,),
    }
    h5_path = path.with_suffix(".h5")
    with h5py.File(h5_path, "w") as h5:
        for index, (name, shape) in enumerate(shapes.items()):
            h5.create_dataset(name, data=(rng.randn(*shape) * 0.3).astype(np.float32))
            h5[name].attrs["index"] = index
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("net.nntxt", text)
        archive.write(h5_path, "parameter.h5")


class ArrayDataset:
    """Random rows for the tiny model: ``len()`` and ``batch(rows)``, as a Dataset has."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.RandomState(seed)
        self.x = rng.rand(n, 2, 6, 6).astype(np.float32)
        self.y = rng.randint(0, 3, (n, 1)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, rows):
        return {"Input": self.x[rows], "CategoricalCrossEntropy_T": self.y[rows]}
