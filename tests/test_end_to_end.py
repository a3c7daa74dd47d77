"""Both plugins run as a user (or NNC) runs them: each script once as its own process, then
in this process on a model written by NNC itself, from a result folder and on a Japanese
Windows dataset. Determinism is tested in process (influence/test_trials.py), interruptions
in test_catalogue.py and runtime/test_signals.py."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import (
    COMPLETION,
    IMAGE_SCRIPT,
    TABULAR_SCRIPT,
    read_csv,
    read_header,
    run_in_process,
    run_plugins,
)

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def samples(samples_dir) -> Path:
    """``samples/build`` (the session fixture of conftest.py builds it when needed)."""
    return samples_dir


def image_args(samples: Path, output: Path, *extra: object) -> list:
    digits = samples / "digits"
    return [
        "-m",
        samples / "models" / "digits_cnn_noisy" / "results.nnp",
        "-t",
        digits / "train_noisy.csv",
        "-v",
        digits / "val.csv",
        "-o",
        output,
        *extra,
    ]


def tabular_args(samples: Path, output: Path, *extra: object) -> list:
    cancer = samples / "cancer"
    return [
        "-m",
        samples / "models" / "cancer_mlp_noisy" / "results.nnp",
        "-t",
        cancer / "train_noisy.csv",
        "-v",
        cancer / "val.csv",
        "-o",
        output,
        *extra,
    ]


def n_rows(csv_path: Path) -> int:
    return len(read_csv(csv_path))


def assert_ranked(rows: list, n: int) -> None:
    """Every training row once, sorted by influence (ties by row), finite scores."""
    scores = np.array([float(r["influence"]) for r in rows])
    index = np.array([int(r["datasource_index"]) for r in rows])
    assert sorted(index.tolist()) == list(range(n))
    assert np.isfinite(scores).all()
    assert all((a, i) <= (b, j) for a, b, i, j in zip(scores, scores[1:], index, index[1:])), (
        "not sorted by influence"
    )


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
    assert COMPLETION in result.stderr


def test_image_plugin_on_the_noisy_digits(samples, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    first, tabular = run_plugins(
        [
            (IMAGE_SCRIPT, image_args(samples, out / "a.csv", "-nt", 1, "--step-log")),
            (TABULAR_SCRIPT, tabular_args(samples, tmp_path / "tabular.csv", "-nt", 2, "-bs", 32)),
        ]
    )
    assert_succeeded(first)
    assert_succeeded(tabular)

    train_csv = samples / "digits" / "train_noisy.csv"
    train = read_csv(train_csv)
    rows = read_csv(out / "a.csv")
    assert read_header(out / "a.csv") == ["x:image", "y:label", "influence", "datasource_index"]
    assert len(rows) == len(train)
    assert_ranked(rows, len(train))
    for row in rows:
        source = train[int(row["datasource_index"])]
        image = (out / row["x:image"]).resolve()
        assert image == (train_csv.parent / source["x:image"]).resolve()
        assert image.is_file() and "\\" not in row["x:image"]
        assert row["y:label"] == source["y:label"]

    steps = read_csv(out / "a_steps.csv")
    assert sorted(int(i) for s in steps for i in s["rows"].split()) == list(range(len(train)))
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a_steps.csv"]
    assert f"scored {len(train)} rows" in first.stderr

    check_tabular_output(samples, tmp_path / "tabular.csv")


def check_tabular_output(samples: Path, output: Path) -> None:
    train_csv = samples / "cancer" / "train_noisy.csv"
    train_header = read_header(train_csv)
    train = read_csv(train_csv)
    # Two trials: the spread over them follows NNC's three leading columns.
    leading = ["index", "influence", "datasource_index", "influence_std"]
    assert read_header(output) == [*leading, *train_header]
    rows = read_csv(output)
    assert len(rows) == len(train)
    assert_ranked(rows, len(train))
    for row in rows:
        assert row["index"] == row["datasource_index"]
        source = train[int(row["index"])]
        assert all(row[column] == source[column] for column in train_header)


def test_relative_paths_from_the_working_folder(samples, tmp_path):
    """NNC runs a plugin from the result folder, with paths relative to it."""
    work = tmp_path / "work"
    work.mkdir()
    args = tabular_args(samples, work / "out.csv")
    args = [os.path.relpath(a, work) if isinstance(a, Path) else a for a in args]
    result = run_in_process("tabular", *args, cwd=work)
    assert_succeeded(result)
    assert n_rows(work / "out.csv") == n_rows(samples / "cancer" / "train_noisy.csv")


def make_fashion_like_dataset(folder: Path, n_train: int = 64, n_val: int = 32) -> None:
    """28x28 grayscale PNGs, labels 0..9, in NNC's image CSV layout."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        lines = ["x:image,y:label"]
        (folder / split).mkdir(parents=True)
        for i in range(count):
            label = i % 10
            pixels = rng.integers(0, 60, size=(28, 28))
            pixels[2 + 2 * label : 6 + 2 * label, 4:24] += 180  # a class-dependent stripe
            name = f"{split}/{i:03d}.png"
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / name)
            lines.append(f"{name},{label}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_real_nnc_model_runs_end_to_end(tmp_path, nnc_fixture):
    """The results.nnp that NNC wrote for its FashionMNIST sample, run from its result folder."""
    result_folder = tmp_path / "fashion.files" / "20210611_000000"
    result_folder.mkdir(parents=True)
    (result_folder / "results.nnp").write_bytes(nnc_fixture.read_bytes())
    with zipfile.ZipFile(nnc_fixture) as archive:  # NNC leaves net.nntxt beside results.nnp
        (result_folder / "net.nntxt").write_bytes(archive.read("net.nntxt"))
    data = tmp_path / "data"
    make_fashion_like_dataset(data)

    result = run_in_process(
        "image",
        "-t",
        data / "train.csv",
        "-v",
        data / "val.csv",
        "-bs",
        16,
        "-nt",
        1,
        cwd=result_folder,
    )
    assert_succeeded(result)
    assert "chosen by" in result.stderr and "net.nntxt" in result.stderr
    output = result_folder / "influence.csv"  # the default name, in the working folder
    rows = read_csv(output)
    assert len(rows) == 64
    assert_ranked(rows, 64)
    for row in rows:
        assert (result_folder / row["x:image"]).resolve().is_file()


def test_a_japanese_windows_dataset(samples, tmp_path):
    """cp932 CSVs with CRLF, backslashes and Japanese names: read, and written back in cp932."""
    import csv

    digits = samples / "digits"
    data = tmp_path / "データ"
    (data / "画像").mkdir(parents=True)
    for split, count in (("train", 40), ("val", 20)):
        with open(digits / f"{split}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))[:count]
        lines = ["x:image,y:label"]
        for i, row in enumerate(rows):
            name = f"{split}_数字{i}.png"
            (data / "画像" / name).write_bytes((digits / row["x:image"]).read_bytes())
            lines.append(f"画像\\{name},{row['y:label']}")
        (data / f"{split}.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("cp932"))
    out = tmp_path / "結果"
    out.mkdir()
    model = samples / "models" / "digits_cnn" / "results.nnp"
    result = run_in_process(
        "image", "-m", model, "-t", data / "train.csv", "-v", data / "val.csv",
        "-o", out / "影響.csv", "-nt", 1, "-bs", 16,
    )  # fmt: skip
    assert_succeeded(result)
    assert sorted(p.name for p in out.iterdir()) == ["影響.csv"]  # the temporary folder is gone
    text = (out / "影響.csv").read_bytes().decode("cp932")
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 40
    for row in rows:
        assert (out / row["x:image"]).resolve().is_file()
        assert "画像/train_数字" in row["x:image"]
