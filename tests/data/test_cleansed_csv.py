"""After the ranking: the cleansed training CSV and the tile."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import read_csv, read_header, run_in_process

from nnabla_sgd_influence import InfluenceError, compute_influence, load_dataset, load_model
from nnabla_sgd_influence.evaluation.variants import trained_further
from nnabla_sgd_influence.nnp.model import DataVariable

IMAGE = [DataVariable("Input", "x", (1, 28, 28)), DataVariable("T", "y", (1,), n_classes=10)]


@pytest.fixture(scope="module")
def cancer_result(samples_dir):
    folder = samples_dir / "cancer"
    model = samples_dir / "models" / "cancer_mlp_noisy" / "results.nnp"
    result = compute_influence(model, folder / "train_noisy.csv", folder / "val.csv", n_trials=2)
    return model, folder, result


def test_cleansed_csv_keeps_every_other_record_byte_for_byte(cancer_result, tmp_path):
    model_path, folder, result = cancer_result
    kept = result.write_cleansed_csv(tmp_path / "clean.csv", remove_top=20)
    source = (folder / "train_noisy.csv").read_bytes().splitlines(keepends=True)
    removed = set(result.harmful(20).tolist())
    expected = [source[0]] + [line for i, line in enumerate(source[1:]) if i not in removed]
    assert (tmp_path / "clean.csv").read_bytes() == b"".join(expected)
    assert kept == len(source) - 1 - 20

    # Retraining on it with the sample model: the 20 rows are gone, nothing else changed.
    model = load_model(model_path)
    original = load_dataset(folder / "train_noisy.csv", model.data_variables)
    cleansed = load_dataset(tmp_path / "clean.csv", model.data_variables)
    remaining = np.setdiff1d(np.arange(len(original)), sorted(removed))
    for name, values in cleansed.batch(np.arange(kept)).items():
        np.testing.assert_array_equal(values, original.batch(remaining)[name])
    retrained = trained_further(model, cleansed, batch_size=64, seed=0, epochs=1)
    assert retrained.solver.start_iteration == model.solver.start_iteration + 6  # 321 rows
    assert all(np.isfinite(v).all() for v in retrained.parameters.values())


@pytest.mark.parametrize("remove_top", [-1, 341, 1000])
def test_remove_top_must_leave_rows(cancer_result, tmp_path, remove_top):
    with pytest.raises(InfluenceError, match="remove_top"):
        cancer_result[2].write_cleansed_csv(tmp_path / "c.csv", remove_top)
    assert not (tmp_path / "c.csv").exists()


def japanese_image_csv(root: Path, n: int = 12) -> Path:
    from PIL import Image

    (root / "画像").mkdir(parents=True)
    rng = np.random.RandomState(1)
    lines = ["x:image,y:label"]
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (28, 28)).astype(np.uint8)).save(
            root / "画像" / f"{i}.png"
        )
        lines.append(f"画像\\{i}.png,{i % 10}")
    csv_path = root / "学習.csv"
    csv_path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp932"))
    return csv_path


def test_cleansed_image_csv_in_another_folder_rewrites_only_the_paths(tmp_path):
    from nnabla_sgd_influence.data.cleansed_csv import write_cleansed_csv

    csv_path = japanese_image_csv(tmp_path / "data")
    dataset = load_dataset(csv_path, IMAGE)
    out = tmp_path / "結果" / "sub"
    out.mkdir(parents=True)
    write_cleansed_csv(dataset, [3, 0], out / "c.csv")
    raw = (out / "c.csv").read_bytes()
    assert raw.count(b"\r\n") == 11 and b"\n\n" not in raw  # CRLF kept
    rows = list(csv.reader(raw.decode("cp932").splitlines()))
    assert rows[0] == ["x:image", "y:label"]
    assert [r[1] for r in rows[1:]] == [str(i % 10) for i in range(12) if i not in (0, 3)]
    for row, i in zip(rows[1:], [i for i in range(12) if i not in (0, 3)]):
        assert "\\" in row[0]  # the input's separator style
        assert (out / row[0].replace("\\", "/")).resolve() == (
            tmp_path / "data" / "画像" / f"{i}.png"
        )
    again = load_dataset(out / "c.csv", IMAGE)
    np.testing.assert_array_equal(
        again.images(np.arange(10)), dataset.images(np.array([1, 2, 4, 5, 6, 7, 8, 9, 10, 11]))
    )
    # Beside the input, the records are written as they are.
    write_cleansed_csv(dataset, [3, 0], tmp_path / "data" / "c.csv")
    source = csv_path.read_bytes().split(b"\r\n")
    assert (tmp_path / "data" / "c.csv").read_bytes().split(b"\r\n") == [
        source[0],
        *source[2:4],
        *source[5:],
    ]


def test_tile_shows_the_chosen_images_as_the_model_saw_them(tmp_path):
    from PIL import Image

    from nnabla_sgd_influence.data.tile import MIN_CELL, draw_tile, sections_for

    dataset = load_dataset(japanese_image_csv(tmp_path / "data"), IMAGE)
    scores = np.linspace(-1, 1, 12)[::-1].copy()  # row 11 is the most harmful
    ranking = np.argsort(scores, kind="stable")
    sections = sections_for(dataset, scores, ranking, 5, helpful=True)
    assert [s.heading for s in sections] == [
        "5 most harmful (most negative influence first)",
        "5 most helpful (most positive influence first)",
    ]
    assert sections[0].captions[0] == "row 11  y=1\n-1.00e+00"
    image = draw_tile("title", sections)
    scale = int(np.ceil(MIN_CELL / 28))
    # The first image of the harmful section, enlarged, is row 11's pixels.
    first = np.asarray(image.convert("L"))
    y0 = 2 * 12 + 6 + 12 + 6
    crop = first[y0 : y0 + 28 * scale : scale, 6 : 6 + 28 * scale : scale]
    with Image.open(tmp_path / "data" / "画像" / "11.png") as source:
        np.testing.assert_array_equal(crop, np.asarray(source.convert("L")))


def test_both_plugins_write_the_spread_and_the_extras(samples_dir, tmp_path):
    cancer, digits = samples_dir / "cancer", samples_dir / "digits"
    tabular = run_in_process(
        "tabular", "-m", samples_dir / "models" / "cancer_logreg_noisy" / "results.nnp",
        "-t", cancer / "train_noisy.csv", "-v", cancer / "val.csv", "-o", tmp_path / "t.csv",
        "-nt", 2, "--remove_top", 10,
    )  # fmt: skip
    assert tabular.returncode == 0, tabular.stderr
    header = read_header(tmp_path / "t.csv")
    assert header[:4] == ["index", "influence", "datasource_index", "influence_std"]
    assert header[4:] == read_header(cancer / "train_noisy.csv")
    assert len(read_csv(tmp_path / "t_cleansed.csv")) == 341 - 10
    assert (
        "of the 10 most harmful" in tabular.stderr and "distinguishable from zero" in tabular.stderr
    )
    assert tabular.stderr.rstrip().endswith("SGD influence completed successfully.")

    train = tmp_path / "train.csv"
    train.write_text("\n".join((digits / "train_noisy.csv").read_text().splitlines()[:65]) + "\n")
    (tmp_path / "images").symlink_to(digits / "images")
    image = run_in_process(
        "image", "-m", samples_dir / "models" / "digits_cnn_noisy" / "results.nnp",
        "-t", train, "-v", digits / "val.csv", "-o", tmp_path / "i.csv", "-nt", 1, "--tile", 8,
    )  # fmt: skip
    assert image.returncode == 0, image.stderr
    assert read_header(tmp_path / "i.csv") == [
        "x:image",
        "y:label",
        "influence",
        "datasource_index",
    ]
    assert (tmp_path / "i_tile.png").stat().st_size > 1000
    refused = run_in_process(
        "tabular", "-m", samples_dir / "models" / "cancer_logreg" / "results.nnp",
        "-t", cancer / "train.csv", "-v", cancer / "val.csv", "-o", tmp_path / "x.csv",
        "--remove_top", 341,
    )  # fmt: skip
    assert refused.returncode == 1 and "would leave no training rows" in refused.stderr
