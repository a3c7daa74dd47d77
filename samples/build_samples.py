"""Build the sample datasets and Neural Network Console (NNC) models used by demos and tests.

Everything is generated offline and deterministically from scikit-learn's bundled datasets:

* ``build/digits``: 8x8 digits rendered as 28x28 PNG files plus NNC image CSVs.
* ``build/cancer``: standardized breast-cancer features as NNC tabular CSVs.
* ``build/digits_rgb``: the same digits as 3x32x32 color PNG files (random foreground and
  background colors, noise) for the small ResNet, which is trained only briefly: it is there to
  measure speed on a ResNet-class model with BatchNormalization.
* ``build/models/<name>``: a ``results.nnp`` laid out like the one NNC writes after training
  (``Main`` / ``MainValidation`` / ``MainRuntime`` networks, optimizer with its state file,
  monitors, executor), trained with nnabla, and a ``metrics.json``.

Run ``python samples/build_samples.py [--force]``. The build is skipped when ``build/.stamp``
holds the hash of this file; otherwise it is made in a temporary folder next to ``build`` and
renamed into place at the end, so an interrupted run never leaves a half-built folder.
"""

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parent
BUILD_DIR = SAMPLES_DIR / "build"
STAMP_NAME = ".stamp"
TMP_PREFIX = ".build-tmp-"

SPLIT_SEED = 0
NOISE_SEED = 1
NOISE_FRACTION = 0.1
IMAGE_SIZE = 28
DIGITS_SPLIT = (1000, 300)  # train, val; test gets the rest (497)
DIGITS_RGB_SPLIT = (256, 128, 128)  # train, val, test; the other digits are not used
RGB_IMAGE_SIZE = 32
RGB_SEED = 2
CANCER_SPLIT = (341, 114)  # train, val; test gets the rest (114)
NNC_MONITOR_INTERVAL = 10
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

Arrays = Tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """Recipe of one sample model: data, architecture and training settings."""

    name: str
    dataset: str  # "digits", "digits_rgb" or "cancer"
    train_csv: str  # file name inside the dataset folder
    arch: str  # key of ARCHITECTURES
    solver: str  # NNC solver type: "Adam" or "Sgd"
    learning_rate: float
    batch_size: int
    epochs: int
    seed: int


# name, dataset, train_csv, arch, solver, learning_rate, batch_size, epochs, seed
MODEL_SPECS: Tuple[ModelSpec, ...] = (
    ModelSpec("digits_cnn", "digits", "train.csv", "cnn", "Adam", 0.001, 32, 12, 7),
    ModelSpec("digits_cnn_noisy", "digits", "train_noisy.csv", "cnn", "Adam", 0.001, 32, 12, 7),
    ModelSpec("cancer_mlp", "cancer", "train.csv", "mlp", "Sgd", 0.05, 64, 100, 11),
    ModelSpec("cancer_mlp_noisy", "cancer", "train_noisy.csv", "mlp", "Sgd", 0.05, 64, 100, 11),
    ModelSpec("cancer_logreg", "cancer", "train.csv", "logreg", "Sgd", 0.05, 64, 100, 13),
    ModelSpec(
        "cancer_logreg_noisy", "cancer", "train_noisy.csv", "logreg", "Sgd", 0.05, 64, 100, 13
    ),
    ModelSpec("cancer_mlp_dropout", "cancer", "train.csv", "mlp_dropout", "Sgd", 0.05, 64, 100, 17),
    # About 0.48M parameters, 9 BatchNormalization layers; one epoch keeps the build quick.
    ModelSpec("digits_rgb_resnet", "digits_rgb", "train.csv", "resnet", "Adam", 0.001, 32, 1, 19),
)


# ----------------------------------------------------------------------------------------------
# Paths and build bookkeeping
# ----------------------------------------------------------------------------------------------


def build_dir() -> Path:
    """Folder holding the built samples (``samples/build``)."""
    return BUILD_DIR


def source_hash() -> str:
    """SHA-256 of this file; a changed recipe invalidates the previous build."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def expected_model_files(root: Path = BUILD_DIR) -> List[Path]:
    """The ``results.nnp`` and ``metrics.json`` of every sample model under ``root``."""
    files = []
    for spec in MODEL_SPECS:
        folder = root / "models" / spec.name
        files += [folder / "results.nnp", folder / "metrics.json"]
    return files


def is_up_to_date(root: Path = BUILD_DIR) -> bool:
    """True when ``root`` was completely built by the current version of this file."""
    stamp = root / STAMP_NAME
    if not stamp.is_file() or stamp.read_text().strip() != source_hash():
        return False
    return all(f.is_file() for f in expected_model_files(root))


def _remove_leftover_tmp_dirs() -> None:
    """Delete temporary folders of interrupted builds (only call with the build lock held)."""
    for leftover in SAMPLES_DIR.glob(TMP_PREFIX + "*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``tmp`` folder with renames only."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise concurrent builds (say ``make samples`` and a test session) on this folder."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: builds are not serialised
        yield
        return
    fd = os.open(SAMPLES_DIR, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build(force: bool = False, verbose: bool = False) -> Path:
    """Build all samples into ``samples/build`` unless already up to date; return the folder."""
    if not force and is_up_to_date():
        return BUILD_DIR
    with _build_lock():
        if not force and is_up_to_date():  # a concurrent build may have just finished
            return BUILD_DIR
        _remove_leftover_tmp_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=SAMPLES_DIR))
        try:
            tmp.chmod(0o755)
            _build_all(tmp, verbose)
            (tmp / STAMP_NAME).write_text(source_hash() + "\n")
            _swap_into_place(tmp, BUILD_DIR)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return BUILD_DIR


def _build_all(root: Path, verbose: bool) -> None:
    """Write both datasets and train every model into ``root``."""
    build_digits(root / "digits")
    build_digits_rgb(root / "digits_rgb")
    build_cancer(root / "cancer")
    for spec in MODEL_SPECS:
        start = time.perf_counter()
        metrics = build_model(spec, root)
        if verbose:
            print(
                f"{spec.name:22s} test={metrics['test_accuracy']:.4f} "
                f"val={metrics['val_accuracy']:.4f} ({time.perf_counter() - start:.1f} s)"
            )


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, sizes: Tuple[int, int], seed: int) -> List[np.ndarray]:
    """Sorted row indices of a stratified train/val/test split (test takes the remainder)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, rest = train_test_split(
        index, train_size=sizes[0], stratify=labels, random_state=seed, shuffle=True
    )
    val, test = train_test_split(
        rest, train_size=sizes[1], stratify=labels[rest], random_state=seed, shuffle=True
    )
    return [np.sort(part) for part in (train, val, test)]


def flip_labels(
    labels: np.ndarray, n_classes: int, fraction: float, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Copy of ``labels`` with ``fraction`` of the rows moved to another random class.

    Returns the noisy labels and the sorted row indices that were flipped.
    """
    rng = np.random.RandomState(seed)
    count = int(round(fraction * len(labels)))
    rows = np.sort(rng.choice(len(labels), size=count, replace=False))
    noisy = labels.copy()
    offsets = rng.randint(1, n_classes, size=count)
    noisy[rows] = (labels[rows] + offsets) % n_classes
    return noisy, rows


def write_noisy_train(
    folder: Path, train: Any, label_column: str, n_classes: int, float_format: Optional[str] = None
) -> None:
    """Write ``train_noisy.csv`` (same text as ``train.csv`` but for the flipped labels)
    and the ``flipped_train_noisy.csv`` answer key."""
    import pandas as pd

    original = train[label_column].to_numpy()
    noisy, rows = flip_labels(original, n_classes, NOISE_FRACTION, NOISE_SEED)
    noisy_train = train.copy()
    noisy_train[label_column] = noisy
    _write_csv(noisy_train, folder / "train_noisy.csv", float_format)
    flipped = pd.DataFrame(
        {"index": rows, "original_label": original[rows], "noisy_label": noisy[rows]}
    )
    _write_csv(flipped, folder / "flipped_train_noisy.csv")


def _write_csv(frame: Any, path: Path, float_format: Optional[str] = None) -> None:
    """Write a DataFrame as an NNC CSV (no index column, ``\\n`` line ends)."""
    frame.to_csv(path, index=False, float_format=float_format, lineterminator="\n")


def render_digit(image: np.ndarray) -> Any:
    """Turn one 8x8 digit (values 0..16) into a 28x28 grayscale PIL image."""
    from PIL import Image

    pixels = np.clip(np.round(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)


def build_digits(folder: Path) -> None:
    """Write the digits PNG images and their NNC image CSVs into ``folder``."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    for split, rows in zip(
        ("train", "val", "test"), stratified_split(labels, DIGITS_SPLIT, SPLIT_SEED)
    ):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        paths = []
        for row in rows:
            relative = f"images/{split}/{row:05d}.png"
            render_digit(digits.images[row]).save(folder / relative)
            paths.append(relative)
        frame = pd.DataFrame({"x:image": paths, "y:label": labels[rows]})
        _write_csv(frame, folder / f"{split}.csv")
        if split == "train":
            write_noisy_train(folder, frame, "y:label", n_classes=10)


def render_color_digit(image: np.ndarray, rng: np.random.RandomState) -> Any:
    """One 8x8 digit as a 32x32 RGB PIL image: a random light color on a random dark one,
    with a little noise."""
    from PIL import Image

    gray = render_digit(image).resize((RGB_IMAGE_SIZE, RGB_IMAGE_SIZE), Image.BILINEAR)
    ink = np.asarray(gray, dtype=np.float64)[None] / 255.0
    background = rng.uniform(0.0, 0.45, size=(3, 1, 1))
    foreground = rng.uniform(0.55, 1.0, size=(3, 1, 1))
    pixels = (
        background + (foreground - background) * ink + rng.normal(0.0, 0.03, (3,) + ink.shape[1:])
    )
    rgb = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(rgb, mode="RGB")


def build_digits_rgb(folder: Path) -> None:
    """Write color versions of some digits (3x32x32 PNG) and their NNC image CSVs."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train, val, rest = stratified_split(labels, DIGITS_RGB_SPLIT[:2], SPLIT_SEED)
    rng = np.random.RandomState(RGB_SEED)
    test = np.sort(rng.choice(rest, size=DIGITS_RGB_SPLIT[2], replace=False))
    for split, rows in zip(("train", "val", "test"), (train, val, test)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        paths = []
        for row in rows:
            relative = f"images/{split}/{row:05d}.png"
            render_color_digit(digits.images[row], rng).save(folder / relative)
            paths.append(relative)
        _write_csv(
            pd.DataFrame({"x:image": paths, "y:label": labels[rows]}), folder / f"{split}.csv"
        )


def build_cancer(folder: Path) -> None:
    """Write the standardized breast-cancer features as NNC tabular CSVs into ``folder``."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    labels = data.target.astype(np.int64)
    parts = stratified_split(labels, CANCER_SPLIT, SPLIT_SEED)
    mean = data.data[parts[0]].mean(axis=0)
    std = data.data[parts[0]].std(axis=0)
    folder.mkdir(parents=True, exist_ok=True)
    columns = [f"x__{i}" for i in range(data.data.shape[1])]
    for split, rows in zip(("train", "val", "test"), parts):
        frame = pd.DataFrame((data.data[rows] - mean) / std, columns=columns)
        frame["y"] = labels[rows]
        _write_csv(frame, folder / f"{split}.csv", float_format="%.6f")
        if split == "train":
            write_noisy_train(folder, frame, "y", n_classes=2, float_format="%.6f")


def read_dataset(csv_path: Path) -> Arrays:
    """Read an NNC CSV the way NNC feeds it: ``x`` as float32 (images / 255), ``y`` as (N, 1)."""
    import pandas as pd

    frame = pd.read_csv(csv_path)
    if "x:image" in frame.columns:
        from PIL import Image

        with Image.open(csv_path.parent / frame["x:image"][0]) as first:
            color = first.mode == "RGB"
        images = [
            np.asarray(Image.open(csv_path.parent / p).convert("RGB" if color else "L"))
            for p in frame["x:image"]
        ]
        x = np.stack(images).astype(np.float32) / 255.0
        x = x.transpose(0, 3, 1, 2) if color else x[:, None]
        y = frame["y:label"].to_numpy()
    else:
        x = frame[[c for c in frame.columns if c.startswith("x__")]].to_numpy(np.float32)
        y = frame["y"].to_numpy()
    return x, y.reshape(-1, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Networks (layer scopes follow NNC's names, e.g. "Affine_2/affine/W")
# ----------------------------------------------------------------------------------------------


def digits_cnn_body(x: Any, train: bool) -> Any:
    """Conv-BN-ReLU-Pool-Conv-ReLU-Pool-Affine-ReLU-Affine; returns the logits."""
    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    with nn.parameter_scope("Convolution"):
        h = PF.convolution(x, 8, (5, 5))
    with nn.parameter_scope("BatchNormalization"):
        h = PF.batch_normalization(h, eps=1e-4, batch_stat=train)
    h = F.max_pooling(F.relu(h), (2, 2))
    with nn.parameter_scope("Convolution_2"):
        h = PF.convolution(h, 16, (3, 3))
    h = F.max_pooling(F.relu(h), (2, 2))
    with nn.parameter_scope("Affine"):
        h = F.relu(PF.affine(h, 64))
    with nn.parameter_scope("Affine_2"):
        return PF.affine(h, 10)


class NncNames:
    """Layer names in the order NNC gives them: ``Convolution``, ``Convolution_2``, ..."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}

    def __call__(self, layer_type: str) -> str:
        count = self.counts[layer_type] = self.counts.get(layer_type, 0) + 1
        return layer_type if count == 1 else f"{layer_type}_{count}"


def resnet_body(x: Any, train: bool, widths: Sequence[int] = (32, 64, 128)) -> Any:
    """A small ResNet for 3x32x32 inputs: Conv-BN-ReLU, then per width (a stride-2 Conv-BN-ReLU
    from the second on) one residual block Conv-BN-ReLU-Conv-BN + identity, ReLU; global
    average pooling and Affine. 9 BatchNormalization layers, about 0.48M parameters."""
    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    names = NncNames()

    def conv_bn(h: Any, channels: int, stride: int = 1, relu: bool = True) -> Any:
        with nn.parameter_scope(names("Convolution")):
            h = PF.convolution(
                h, channels, (3, 3), pad=(1, 1), stride=(stride, stride), with_bias=False
            )
        with nn.parameter_scope(names("BatchNormalization")):
            h = PF.batch_normalization(h, eps=1e-4, batch_stat=train)
        return F.relu(h) if relu else h

    h = conv_bn(x, widths[0])
    for index, width in enumerate(widths):
        if index:
            h = conv_bn(h, width, stride=2)
        residual = conv_bn(conv_bn(h, width), width, relu=False)
        h = F.relu(h + residual)
    h = F.global_average_pooling(h)
    with nn.parameter_scope(names("Affine")):
        return PF.affine(h, 10)


def tanh_mlp_body(x: Any, train: bool, dropout: float = 0.0) -> Any:
    """Affine(16)-Tanh[-Dropout]-Affine(2); Dropout only in the training network."""
    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    with nn.parameter_scope("Affine"):
        h = F.tanh(PF.affine(x, 16))
    if train and dropout > 0:
        h = F.dropout(h, p=dropout)
    with nn.parameter_scope("Affine_2"):
        return PF.affine(h, 2)


def logreg_body(x: Any, train: bool) -> Any:
    """A single Affine(1) giving the logit of class 1."""
    import nnabla as nn
    import nnabla.parametric_functions as PF

    with nn.parameter_scope("Affine"):
        return PF.affine(x, 1)


def categorical_head(logits: Any) -> Tuple[Any, str, str]:
    """Softmax output with NNC's multi-class loss name and label name."""
    import nnabla.functions as F

    return F.softmax(logits), "CategoricalCrossEntropy", "CategoricalCrossEntropy_T"


def binary_head(logits: Any) -> Tuple[Any, str, str]:
    """Sigmoid output with NNC's binary loss name and label name."""
    import nnabla.functions as F

    return F.sigmoid(logits), "BinaryCrossEntropy", "BinaryCrossEntropy_T"


def loss_function(loss_name: str, output: Any, label: Any) -> Any:
    """Per-row loss (shape (B, 1)) as NNC's loss layers compute it."""
    import nnabla.functions as F

    if loss_name == "CategoricalCrossEntropy":
        return F.categorical_cross_entropy(output, label)
    return F.binary_cross_entropy(output, label)


ARCHITECTURES: Dict[str, Tuple[Callable[..., Any], Callable[[Any], Tuple[Any, str, str]]]] = {
    "cnn": (digits_cnn_body, categorical_head),
    "resnet": (resnet_body, categorical_head),
    "mlp": (tanh_mlp_body, categorical_head),
    "mlp_dropout": (lambda x, train: tanh_mlp_body(x, train, dropout=0.3), categorical_head),
    "logreg": (logreg_body, binary_head),
}


@dataclass
class Graphs:
    """The three NNC networks of one model, built on shared parameters."""

    main: Dict[str, Any]
    validation: Dict[str, Any]
    runtime: Dict[str, Any]
    output_name: str
    loss_name: str
    label_name: str


def build_graphs(arch: str, input_shape: Sequence[int], batch_size: int) -> Graphs:
    """Create Main (training, with loss), MainValidation (with loss) and MainRuntime graphs."""
    import nnabla as nn

    body, head = ARCHITECTURES[arch]
    nets = []
    for is_training, with_loss in ((True, True), (False, True), (False, False)):
        x = nn.Variable((batch_size, *input_shape))
        output, loss_name, label_name = head(body(x, is_training))
        net = {"Input": x, "output": output}
        if with_loss:
            net["label"] = nn.Variable((batch_size, 1))
            net["loss"] = loss_function(loss_name, output, net["label"])
        nets.append(net)
    output_name = "Softmax" if loss_name.startswith("Categorical") else "Sigmoid"
    return Graphs(*nets, output_name=output_name, loss_name=loss_name, label_name=label_name)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def make_solver(spec: ModelSpec) -> Any:
    """The nnabla solver named by ``spec`` (weight decay 0, constant learning rate)."""
    import nnabla.solvers as S

    if spec.solver == "Adam":
        return S.Adam(alpha=spec.learning_rate, beta1=0.9, beta2=0.999, eps=1e-8)
    return S.Sgd(lr=spec.learning_rate)


def train(spec: ModelSpec, graphs: Graphs, x: np.ndarray, y: np.ndarray) -> Any:
    """Train ``graphs.main`` with minibatch SGD-style updates; return the solver.

    Each epoch visits a fresh permutation in ``len(x) // batch_size`` full batches, the same
    iteration count NNC reports as ``iter_per_epoch``.
    """
    import nnabla as nn
    import nnabla.functions as F

    solver = make_solver(spec)
    solver.set_parameters(nn.get_parameters())
    rng = np.random.RandomState(spec.seed)
    main = graphs.main
    mean_loss = F.mean(main["loss"])
    batch = spec.batch_size
    for _ in range(spec.epochs):
        order = rng.permutation(len(x))
        for it in range(len(x) // batch):
            rows = order[it * batch : (it + 1) * batch]
            main["Input"].d = x[rows]
            main["label"].d = y[rows]
            mean_loss.forward(clear_no_need_grad=True)
            solver.zero_grad()
            mean_loss.backward(clear_buffer=True)
            solver.update()
    return solver


# ----------------------------------------------------------------------------------------------
# Writing results.nnp
# ----------------------------------------------------------------------------------------------


def nnp_contents(spec: ModelSpec, graphs: Graphs, solver: Any, n_train: int) -> Dict[str, Any]:
    """The ``contents`` dict for ``nnabla.utils.save.save`` mirroring NNC's sections."""
    import nnabla as nn

    data_vars = {"Input": "x", graphs.label_name: "y"}
    datasets = [
        ("Training", spec.train_csv, True),
        ("Validation", "val.csv", False),
    ]

    def network(name: str, net: Dict[str, Any]) -> Dict[str, Any]:
        names = {"Input": net["Input"]}
        if "loss" in net:
            names[graphs.label_name] = net["label"]
            outputs = {graphs.loss_name: net["loss"]}
        else:
            outputs = {graphs.output_name: net["output"]}
        return {"name": name, "batch_size": spec.batch_size, "outputs": outputs, "names": names}

    return {
        "global_config": {"default_context": nn.get_current_context()},
        "training_config": {
            "max_epoch": spec.epochs,
            "iter_per_epoch": n_train // spec.batch_size,
            "save_best": True,
        },
        "networks": [
            network("Main", graphs.main),
            network("MainValidation", graphs.validation),
            network("MainRuntime", graphs.runtime),
        ],
        "datasets": [
            {
                "name": name,
                "uri": f"../../{spec.dataset}/{csv}",
                "variables": [],
                "shuffle": shuffle,
                "batch_size": spec.batch_size,
                "no_image_normalization": False,
            }
            for name, csv, shuffle in datasets
        ],
        "optimizers": [
            {
                "name": "Optimizer",
                "solver": solver,
                "network": "Main",
                "dataset": "Training",
                "weight_decay": 0,
                "lr_decay": 1,
                "lr_decay_interval": 1,
                "update_interval": 1,
                "data_variables": data_vars,
                "loss_variables": [graphs.loss_name],
            }
        ],
        "monitors": [
            {
                "name": name,
                "network": "MainValidation",
                "dataset": dataset,
                "data_variables": data_vars,
                "monitor_variables": [graphs.loss_name],
            }
            for name, dataset in (("train_error", "Training"), ("valid_error", "Validation"))
        ],
        "executors": [
            {
                "name": "Executor",
                "network": "MainRuntime",
                "data": ["Input"],
                "output": [graphs.output_name],
                # nnabla's save API reads the data-name remapping from the key "remp".
                "remp": {"Input": "x", graphs.output_name: "y'"},
                "num_evaluations": 1,
                "repeat_evaluation_type": "mean",
                "need_back_propagation": False,
                "no_image_normalization": False,
            }
        ],
    }


def rename_like_nnc(network: Any) -> None:
    """Name functions after their type (``Affine``, ``Affine_2``...) and outputs after them.

    nnabla's save API names them ``@Main/Affine`` and ``@Main/Affine_out``; NNC uses the
    layer name for both the function and its output variable.
    """
    counts: Dict[str, int] = {}
    renamed: Dict[str, str] = {}
    for function in network.function:
        counts[function.type] = counts.get(function.type, 0) + 1
        n = counts[function.type]
        function.name = function.type if n == 1 else f"{function.type}_{n}"
        for i, name in enumerate(function.input):
            function.input[i] = renamed.get(name, name)
        old = function.output[0]
        if old.startswith("@"):
            renamed[old] = function.name
            function.output[0] = function.name
    for variable in network.variable:
        variable.name = renamed.get(variable.name, variable.name)


def order_variables_like_nnc(network: Any) -> None:
    """Order variables as NNC does: Input, parameters, labels, then layer outputs."""
    outputs = [f.output[0] for f in network.function]
    by_name = {v.name: v for v in network.variable}

    def rank(variable: Any) -> Tuple[int, int]:
        if variable.name == "Input":
            return 0, 0
        if variable.type == "Parameter":
            return 1, 0
        if variable.name not in outputs:
            return 2, 0
        return 3, outputs.index(variable.name)

    ordered = sorted(by_name.values(), key=rank)
    copies = [type(v)() for v in ordered]
    for copy, original in zip(copies, ordered):
        copy.CopyFrom(original)
    del network.variable[:]
    network.variable.extend(copies)


def initializer_of(parameter_name: str) -> Tuple[str, float]:
    """NNC initializer describing how nnabla's parametric functions initialised a parameter."""
    leaf = parameter_name.rsplit("/", 1)[-1]
    if parameter_name.endswith("conv/W"):
        return "UniformConvolutionGlorot", 1.0
    if parameter_name.endswith("affine/W"):
        return "UniformAffineGlorot", 1.0
    return "Constant", 1.0 if leaf in ("gamma", "var") else 0.0


def is_batch_norm_statistic(parameter_name: str) -> bool:
    """True for BatchNormalization running mean/var, which NNC never updates by gradient."""
    return bool(re.search(r"/bn/(mean|var)$", parameter_name))


def check_layer_scopes(network: Any) -> None:
    """Fail if a layer's parameters do not live under its NNC layer name."""
    for function in network.function:
        for name in function.input:
            if "/" in name and not name.startswith(function.name + "/"):
                raise RuntimeError(f"{network.name}: {name} is not under layer {function.name}")


def nncify_proto(proto: Any) -> None:
    """Adjust the proto written by nnabla's save API to the conventions of NNC's files."""
    context = proto.global_config.default_context
    context.array_class = "CpuCachedArray"
    context.ClearField("device_id")
    proto.training_config.monitor_interval = NNC_MONITOR_INTERVAL
    for network in proto.network:
        rename_like_nnc(network)
        order_variables_like_nnc(network)
        check_layer_scopes(network)
        for variable in network.variable:
            if variable.type == "Parameter":
                variable.initializer.type, variable.initializer.multiplier = initializer_of(
                    variable.name
                )
    for dataset in proto.dataset:
        dataset.create_cache_explicitly = True
    for optimizer in proto.optimizer:
        solver = optimizer.solver
        solver.lr_scheduler_type = "Exponential"
        solver.exponential_scheduler_param.gamma = 1.0
        solver.exponential_scheduler_param.iter_interval = 1
        solver.lr_warmup_scheduler_type = "None"
        for parameter in optimizer.parameter_variable:
            fixed = is_batch_norm_statistic(parameter.variable_name)
            parameter.learning_rate_multiplier = 0.0 if fixed else 1.0


# proto3 text output drops zero/false scalars; NNC writes these ones explicitly.
SPELLED_OUT_DEFAULTS: Dict[Tuple[str, ...], Tuple[str, ...]] = {
    ("network", "variable", "initializer"): ("multiplier: 0",),
    ("network", "function", "batch_normalization_param"): ("batch_stat: false",),
    ("dataset",): ("overwrite_cache: false", "shuffle: false", "no_image_normalization: false"),
    ("optimizer",): ("start_iter: 0", "end_iter: 0"),
    ("optimizer", "solver"): ("weight_decay: 0",),
    ("optimizer", "parameter_variable"): ("learning_rate_multiplier: 0",),
    ("executor",): ("need_back_propagation: false", "no_image_normalization: false"),
}


def spell_out_defaults(text: str) -> str:
    """Insert the default-valued fields of SPELLED_OUT_DEFAULTS that text_format left out."""
    lines_out: List[str] = []
    stack: List[Tuple[str, set]] = []  # (block name, field names seen directly inside)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith("{"):
            stack.append((stripped[:-1].strip(), set()))
        elif stripped == "}":
            path = tuple(name for name, _ in stack)
            seen = stack.pop()[1]
            indent = "  " * (len(stack) + 1)
            for default in SPELLED_OUT_DEFAULTS.get(path, ()):
                if default.split(":")[0] not in seen:
                    lines_out.append(indent + default)
        elif stack:
            stack[-1][1].add(stripped.split(":")[0])
        lines_out.append(line)
    return "\n".join(lines_out) + "\n"


def proto_to_nntxt(proto: Any) -> str:
    """NNC-style text of ``proto``, checked to parse back to the same message."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    # text_format escapes the quote of NNC's output name "y'"; NNC writes it plain.
    text = spell_out_defaults(text_format.MessageToString(proto)).replace("\\'", "'")
    check = nnabla_pb2.NNablaProtoBuf()
    text_format.Parse(text, check)
    if check != proto:
        raise RuntimeError("spelled-out nntxt does not round-trip")
    return text


def rewrite_nnp(path: Path) -> None:
    """Rewrite the saved zip with an NNC-style ``net.nntxt`` and fixed entry timestamps."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    with zipfile.ZipFile(path) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Parse(entries.pop("network.nntxt").decode("utf-8"), proto)
    nncify_proto(proto)
    ordered = [("nnp_version.txt", entries.pop("nnp_version.txt"))]
    ordered.append(("net.nntxt", proto_to_nntxt(proto).encode("utf-8")))
    ordered.append(("parameter.h5", entries.pop("parameter.h5")))
    ordered += sorted(entries.items())  # the optimizer state file(s)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in ordered:
            zout.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data, zipfile.ZIP_DEFLATED)
    path.write_bytes(buffer.getvalue())


def save_nnp(path: Path, spec: ModelSpec, graphs: Graphs, solver: Any, n_train: int) -> None:
    """Save with nnabla's save API (parameters + solver state), then make it NNC-shaped."""
    from nnabla.utils.save import save

    contents = nnp_contents(spec, graphs, solver, n_train)
    save(str(path), contents, include_solver_state=True, solver_state_format=".h5")
    rewrite_nnp(path)


# ----------------------------------------------------------------------------------------------
# Evaluation and the per-model driver
# ----------------------------------------------------------------------------------------------


def predict_labels(output: np.ndarray) -> np.ndarray:
    """Class predictions from a Softmax (N, C) or Sigmoid (N, 1) output."""
    if output.shape[1] == 1:
        return (output[:, 0] >= 0.5).astype(np.int64)
    return output.argmax(axis=1)


def evaluate_nnp(nnp_path: Path, csv_path: Path) -> float:
    """Accuracy of the saved ``MainRuntime`` on a CSV, with the whole CSV as one batch."""
    import nnabla as nn
    from nnabla.utils.nnp_graph import NnpLoader

    x, y = read_dataset(csv_path)
    with nn.parameter_scope("evaluate"):
        net = NnpLoader(str(nnp_path)).get_network("MainRuntime", batch_size=len(x))
        (output,) = net.outputs.values()
        net.inputs["Input"].d = x
        output.forward(clear_buffer=True)
        predicted = predict_labels(output.d.copy())
    nn.clear_parameters()
    return float(np.mean(predicted == y[:, 0].astype(np.int64)))


def build_model(spec: ModelSpec, root: Path) -> Dict[str, Any]:
    """Train one model, save ``results.nnp`` and ``metrics.json``; return the metrics."""
    import nnabla as nn

    data_dir = root / spec.dataset
    x, y = read_dataset(data_dir / spec.train_csv)
    nn.clear_parameters()
    nn.random.seed(spec.seed)
    graphs = build_graphs(spec.arch, x.shape[1:], spec.batch_size)
    solver = train(spec, graphs, x, y)
    folder = root / "models" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    save_nnp(folder / "results.nnp", spec, graphs, solver, len(x))
    nn.clear_parameters()
    metrics = {
        "test_accuracy": evaluate_nnp(folder / "results.nnp", data_dir / "test.csv"),
        "val_accuracy": evaluate_nnp(folder / "results.nnp", data_dir / "val.csv"),
        "dataset": spec.dataset,
        "train_csv": f"{spec.dataset}/{spec.train_csv}",
        "val_csv": f"{spec.dataset}/val.csv",
        "test_csv": f"{spec.dataset}/test.csv",
        "solver": spec.solver,
        "learning_rate": spec.learning_rate,
        "batch_size": spec.batch_size,
        "epochs": spec.epochs,
        "seed": spec.seed,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry: build the samples unless they are up to date."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    if not args.force and is_up_to_date():
        print("samples up to date")
        return 0
    start = time.perf_counter()
    build(force=True, verbose=True)
    print(f"samples built in {BUILD_DIR} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
