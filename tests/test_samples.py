"""Checks of the sample datasets and NNC-format models made by ``samples/build_samples.py``.

The CSV and PNG reading here is written independently of the build script on purpose, so a
bug in the script's own reader cannot hide behind a matching bug in the checks.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "samples" / "build_samples.py"
NNC_FIXTURE = ROOT.parent / "shared" / "fixtures" / "nnc" / "fashion_mnist_cnn_results.nnp"

# model name -> (dataset, training CSV, loss layer, solver type)
MODELS: Dict[str, Tuple[str, str, str, str]] = {
    "digits_cnn": ("digits", "train.csv", "CategoricalCrossEntropy", "Adam"),
    "digits_cnn_noisy": ("digits", "train_noisy.csv", "CategoricalCrossEntropy", "Adam"),
    "cancer_mlp": ("cancer", "train.csv", "CategoricalCrossEntropy", "Sgd"),
    "cancer_mlp_noisy": ("cancer", "train_noisy.csv", "CategoricalCrossEntropy", "Sgd"),
    "cancer_logreg": ("cancer", "train.csv", "BinaryCrossEntropy", "Sgd"),
    "cancer_logreg_noisy": ("cancer", "train_noisy.csv", "BinaryCrossEntropy", "Sgd"),
    "cancer_mlp_dropout": ("cancer", "train.csv", "CategoricalCrossEntropy", "Sgd"),
    "digits_rgb_resnet": ("digits_rgb", "train.csv", "CategoricalCrossEntropy", "Adam"),
}
BRIEFLY_TRAINED = {"digits_rgb_resnet"}  # one epoch, for speed measurements only
SPLIT_SIZES = {
    "digits": {"train": 1000, "val": 300, "test": 497},
    "cancer": {"train": 341, "val": 114, "test": 114},
    "digits_rgb": {"train": 256, "val": 128, "test": 128},
}
NETWORKS = ("Main", "MainValidation", "MainRuntime")


def load_build_module() -> ModuleType:
    """Import samples/build_samples.py by path (``samples`` is not a package)."""
    if "build_samples" in sys.modules:
        return sys.modules["build_samples"]
    spec = importlib.util.spec_from_file_location("build_samples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_samples"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_module() -> ModuleType:
    return load_build_module()


@pytest.fixture(scope="session")
def samples(build_module: ModuleType) -> Path:
    """The built samples folder; builds it once if missing or stale."""
    return build_module.build()


@pytest.fixture(autouse=True)
def clean_parameters() -> Iterator[None]:
    """NnpLoader publishes parameters globally; keep tests from seeing each other's."""
    import nnabla as nn

    nn.clear_parameters()
    yield
    nn.clear_parameters()


def read_rows(path: Path) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of a CSV file."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def read_xy(csv_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Inputs as NNC feeds them (PNG pixels / 255, or the x__ columns) and integer labels."""
    header, rows = read_rows(csv_path)
    labels = np.array([int(r[-1]) for r in rows])
    if header[0] == "x:image":
        pixels = [np.array(Image.open(csv_path.parent / r[0]), dtype=np.float32) for r in rows]
        images = np.stack(pixels) / np.float32(255.0)
        return (images.transpose(0, 3, 1, 2) if images.ndim == 4 else images[:, None]), labels
    return np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32), labels


def nntxt_proto(nnp_path: Path):
    """The NNablaProtoBuf parsed from the ``.nntxt`` inside an ``.nnp``."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    with zipfile.ZipFile(nnp_path) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".nntxt")]
        text = z.read(name).decode("utf-8")
    return text_format.Parse(text, nnabla_pb2.NNablaProtoBuf())


def model_path(samples: Path, name: str) -> Path:
    return samples / "models" / name / "results.nnp"


# ----------------------------------------------------------------------------------------------
# Build bookkeeping
# ----------------------------------------------------------------------------------------------


def test_build_is_idempotent(build_module: ModuleType, samples: Path) -> None:
    stamp = (samples / ".stamp").read_text().strip()
    assert stamp == hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    before = {p: p.stat().st_mtime_ns for p in samples.rglob("*") if p.is_file()}
    assert build_module.build() == samples == build_module.build_dir()
    after = {p: p.stat().st_mtime_ns for p in samples.rglob("*") if p.is_file()}
    assert after == before  # nothing was rebuilt
    assert not list(samples.parent.glob(build_module.TMP_PREFIX + "*"))


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test", "train_noisy"])
def test_digits_csv(samples: Path, split: str) -> None:
    header, rows = read_rows(samples / "digits" / f"{split}.csv")
    assert header == ["x:image", "y:label"]
    assert len(rows) == SPLIT_SIZES["digits"][split.replace("_noisy", "")]
    image_split = "train" if split == "train_noisy" else split
    for path, label in rows:
        assert re.fullmatch(rf"images/{image_split}/\d{{5}}\.png", path)
        assert 0 <= int(label) <= 9
    assert {int(r[1]) for r in rows} == set(range(10))
    with Image.open(samples / "digits" / rows[0][0]) as image:
        assert image.mode == "L" and image.size == (28, 28)
    assert all((samples / "digits" / path).is_file() for path, _ in rows)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_color_digits_csv(samples: Path, split: str) -> None:
    header, rows = read_rows(samples / "digits_rgb" / f"{split}.csv")
    assert header == ["x:image", "y:label"]
    assert len(rows) == SPLIT_SIZES["digits_rgb"][split]
    assert {int(r[1]) for r in rows} == set(range(10))
    with Image.open(samples / "digits_rgb" / rows[0][0]) as image:
        assert image.mode == "RGB" and image.size == (32, 32)


def test_resnet_sample_is_resnet_class(samples: Path) -> None:
    from nnabla_sgd_influence.nnp.model import load_model

    model = load_model(model_path(samples, "digits_rgb_resnet"))
    assert len(model.layers_of_type("BatchNormalization")) == 9
    assert model.layers_of_type("Add2") and 400_000 < model.n_trainable < 600_000
    assert model.data_variables[0].shape == (3, 32, 32)


def test_digits_splits_are_disjoint(samples: Path) -> None:
    names = [
        {Path(r[0]).name for r in read_rows(samples / "digits" / f"{s}.csv")[1]}
        for s in ("train", "val", "test")
    ]
    assert sum(len(n) for n in names) == 1797 == len(set.union(*names))


@pytest.mark.parametrize("split", ["train", "val", "test", "train_noisy"])
def test_cancer_csv(samples: Path, split: str) -> None:
    header, rows = read_rows(samples / "cancer" / f"{split}.csv")
    assert header == [f"x__{i}" for i in range(30)] + ["y"]
    assert len(rows) == SPLIT_SIZES["cancer"][split.replace("_noisy", "")]
    assert {r[-1] for r in rows} == {"0", "1"}


def test_cancer_standardized_with_train_statistics(samples: Path) -> None:
    x, _ = read_xy(samples / "cancer" / "train.csv")
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_flipped_rows_match_noisy_train(samples: Path, dataset: str) -> None:
    folder = samples / dataset
    header, clean = read_rows(folder / "train.csv")
    noisy_header, noisy = read_rows(folder / "train_noisy.csv")
    assert noisy_header == header and len(noisy) == len(clean)
    assert all(c[:-1] == n[:-1] for c, n in zip(clean, noisy))
    changed = [(i, int(c[-1]), int(n[-1])) for i, (c, n) in enumerate(zip(clean, noisy)) if c != n]
    flip_header, flipped = read_rows(folder / "flipped_train_noisy.csv")
    assert flip_header == ["index", "original_label", "noisy_label"]
    assert [tuple(int(v) for v in row) for row in flipped] == changed
    assert len(changed) == round(0.1 * len(clean))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_nnp_loads_with_nnabla(samples: Path, name: str) -> None:
    from nnabla.utils.load import load
    from nnabla.utils.nnp_graph import NnpLoader

    path = model_path(samples, name)
    info = load([str(path)], prepare_data_iterator=False)
    assert set(NETWORKS) <= set(info.networks)
    assert "Optimizer" in info.optimizers and "Executor" in info.executors
    loader = NnpLoader(str(path))
    assert set(NETWORKS) <= set(loader.get_network_names())
    for network in NETWORKS:
        assert "Input" in loader.get_network(network, batch_size=2).inputs


@pytest.mark.parametrize("name", MODELS)
def test_optimizer_section_is_nnc_like(samples: Path, name: str) -> None:
    _, _, loss, solver = MODELS[name]
    path = model_path(samples, name)
    proto = nntxt_proto(path)
    (optimizer,) = proto.optimizer
    assert optimizer.network_name == "Main"
    assert list(optimizer.dataset_name) == ["Training"]
    assert optimizer.solver.type == solver
    assert optimizer.solver.weight_decay == 0
    data = {d.variable_name: d.data_name for d in optimizer.data_variable}
    assert data == {"Input": "x", f"{loss}_T": "y"}
    assert [v.variable_name for v in optimizer.loss_variable] == [loss]
    main = next(n for n in proto.network if n.name == "Main")
    main_parameters = {v.name for v in main.variable if v.type == "Parameter"}
    multipliers = {
        p.variable_name: p.learning_rate_multiplier for p in optimizer.parameter_variable
    }
    assert set(multipliers) == main_parameters
    for parameter, multiplier in multipliers.items():
        is_bn_statistic = re.search(r"BatchNormalization[^/]*/bn/(mean|var)$", parameter)
        assert multiplier == (0.0 if is_bn_statistic else 1.0), parameter
    with zipfile.ZipFile(path) as z:
        assert f"Optimizer_{solver}_optimizer.h5.optimizer" in z.namelist()


@pytest.mark.parametrize("name", MODELS)
def test_networks_use_nnc_names(samples: Path, name: str) -> None:
    _, _, loss, _ = MODELS[name]
    proto = nntxt_proto(model_path(samples, name))
    networks = {n.name: n for n in proto.network}
    for network_name in NETWORKS:
        network = networks[network_name]
        types = [f.type for f in network.function]
        for function in network.function:
            assert list(function.output) == [function.name]
            assert re.fullmatch(rf"{function.type}(_\d+)?", function.name)
            if function.type == "BatchNormalization":
                expected = network_name == "Main"
                assert function.batch_normalization_param.batch_stat is expected
        assert network.variable[0].name == "Input"
        for variable in network.variable:
            if variable.type == "Buffer":
                assert variable.shape.dim[0] == -1, variable.name
        has_loss = network_name != "MainRuntime"
        assert (loss in types) is has_loss
        assert any(v.name == f"{loss}_T" for v in network.variable) is has_loss
        if network_name != "Main":
            assert "Dropout" not in types
    if name == "cancer_mlp_dropout":
        assert "Dropout" in [f.type for f in networks["Main"].function]
    (executor,) = proto.executor
    assert executor.network_name == "MainRuntime"
    assert [(v.variable_name, v.data_name) for v in executor.data_variable] == [("Input", "x")]
    output = "Sigmoid" if loss == "BinaryCrossEntropy" else "Softmax"
    assert [(v.variable_name, v.data_name) for v in executor.output_variable] == [(output, "y'")]
    assert {m.network_name for m in proto.monitor} == {"MainValidation"}


@pytest.mark.parametrize("name", MODELS)
def test_saved_test_accuracy_is_reproduced(samples: Path, name: str) -> None:
    from nnabla.utils.nnp_graph import NnpLoader

    dataset, train_csv, _, _ = MODELS[name]
    metrics = json.loads((samples / "models" / name / "metrics.json").read_text())
    assert metrics["dataset"] == dataset
    assert metrics["train_csv"] == f"{dataset}/{train_csv}"
    x, labels = read_xy(samples / dataset / "test.csv")
    net = NnpLoader(str(model_path(samples, name))).get_network("MainRuntime", batch_size=len(x))
    (output,) = net.outputs.values()
    net.inputs["Input"].d = x
    output.forward()
    scores = output.d
    predicted = (scores[:, 0] >= 0.5).astype(int) if scores.shape[1] == 1 else scores.argmax(1)
    accuracy = float(np.mean(predicted == labels))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    if "noisy" not in name and name not in BRIEFLY_TRAINED:
        assert accuracy > 0.9


@pytest.mark.skipif(not NNC_FIXTURE.is_file(), reason="NNC reference model not available")
def test_layout_matches_real_nnc_file(samples: Path) -> None:
    import h5py

    ours, theirs = model_path(samples, "digits_cnn"), NNC_FIXTURE
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        states = {}
        for key, z in (("ours", a), ("theirs", b)):
            with h5py.File(z.open("Optimizer_Adam_optimizer.h5.optimizer"), "r") as h5:
                states[key] = {k for k in h5["Affine/affine/W"]}
        assert states["ours"] == states["theirs"] == {"mean", "var", "t"}
    sections = [
        {field.name for field, _ in nntxt_proto(path).ListFields()} for path in (ours, theirs)
    ]
    assert sections[0] == sections[1]
    assert [n.name for n in nntxt_proto(ours).network] == [
        n.name for n in nntxt_proto(theirs).network
    ]


# ----------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------


def readme_block(after: str) -> str:
    """The text of the README's first fenced block after the words ``after``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```", readme.index(after))
    body = readme.index("\n", start) + 1
    return readme[body : readme.index("```", body)]


def without_seconds(text: str) -> str:
    """``text`` with its timings (``4.2 s``) and the Python that ran the plugins left out."""
    text = re.sub(r"\d+\.\d s\b", "N s", text)
    return re.sub(r"^\$ \S+", "$ PYTHON", text, flags=re.MULTILINE)


@pytest.mark.system
def test_the_readme_shows_what_make_demo_prints(samples: Path) -> None:
    """``make demo``'s two commands as the Makefile runs them: what they print (on stdout; the
    plugins' log lines go to stderr) is the README's block, line for line but for the times."""
    printed = ""
    for script in ("samples/build_samples.py", "samples/demo.py"):
        completed = subprocess.run(
            [sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        printed += completed.stdout
    shown = readme_block("What `make demo` prints")
    assert without_seconds(printed) == without_seconds(shown)
