"""Reading NNC dataset CSVs: image and tabular layouts, conversions, and one test per bad input."""

import csv
import logging
import re
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
from PIL import Image

from nnabla_sgd_influence.data.csvfile import (
    CsvFormat,
    check_encoding,
    detect_format,
    read_records,
    read_table,
)
from nnabla_sgd_influence.data.datasets import load_dataset
from nnabla_sgd_influence.errors import InfluenceError, excerpt_path
from nnabla_sgd_influence.nnp.compat import bilinear_resample
from nnabla_sgd_influence.nnp.model import DataVariable

NNC_IMAGE_VARIABLES = [
    DataVariable("Input", "x", (1, 28, 28)),
    DataVariable("CategoricalCrossEntropy_T", "y", (1,), n_classes=10),
]
LABEL = DataVariable("y_var", "y", (1,), n_classes=10)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_image(path: Path, pixels: np.ndarray, mode: str = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def random_pixels(seed: int, shape: Sequence[int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=tuple(shape), dtype=np.uint8)


def mnist_like(tmp_path: Path, n: int = 4, size: int = 28) -> Path:
    """An NNC image CSV: grayscale PNGs in a subfolder, paths relative to the CSV."""
    rows = []
    for i in range(n):
        write_image(tmp_path / "images" / f"{i}.png", random_pixels(i, (size, size)))
        rows.append([f"images/{i}.png", i % 10])
    return write_csv(tmp_path / "train.csv", ["x:image", "y:label"], rows)


def decode(path: Path, mode: str) -> np.ndarray:
    """Independent reference decode: PIL in ``mode``, as (C, H, W) uint8."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert(mode))
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def bad_input(message_parts: List[str]) -> str:
    """A regex matching all ``message_parts`` in order."""
    return ".*".join(re.escape(part) for part in message_parts)


# --------------------------------------------------------------------------------------
# Image datasets


def test_nnc_image_dataset_batches_and_labels(tmp_path):
    csv_path = mnist_like(tmp_path, n=5)
    dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES)

    assert len(dataset) == 5
    assert dataset.image_variable == "Input"
    assert dataset.columns == {"Input": ["x:image"], "CategoricalCrossEntropy_T": ["y:label"]}
    batch = dataset.batch(np.array([4, 0, 2]))
    assert set(batch) == {"Input", "CategoricalCrossEntropy_T"}
    assert batch["Input"].shape == (3, 1, 28, 28)
    assert batch["CategoricalCrossEntropy_T"].shape == (3, 1)
    assert all(array.dtype == np.float32 for array in batch.values())
    np.testing.assert_array_equal(batch["CategoricalCrossEntropy_T"][:, 0], [4, 0, 2])
    expected = decode(tmp_path / "images" / "4.png", "L").astype(np.float32) / 255
    np.testing.assert_array_equal(batch["Input"][0], expected)
    np.testing.assert_array_equal(dataset.labels(), [0, 1, 2, 3, 4])
    assert dataset.labels().dtype == np.int64


def test_image_paths_are_absolute_and_follow_subfolders(tmp_path):
    write_image(tmp_path / "data" / "a" / "0.png", random_pixels(0, (28, 28)))
    write_image(tmp_path / "elsewhere" / "1.png", random_pixels(1, (28, 28)))
    absolute = (tmp_path / "elsewhere" / "1.png").resolve()
    csv_path = write_csv(
        tmp_path / "data" / "train.csv", ["x:image", "y:label"], [["a/0.png", 0], [absolute, 1]]
    )
    dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES)
    paths = dataset.image_paths()
    assert all(path.is_absolute() for path in paths)
    assert paths[0].resolve() == (tmp_path / "data" / "a" / "0.png").resolve()
    assert paths[1].resolve() == absolute


def test_windows_separators_in_image_paths(tmp_path):
    write_image(tmp_path / "a" / "0.png", random_pixels(0, (28, 28)))
    csv_path = write_csv(tmp_path / "train.csv", ["x:image", "y:label"], [["a\\0.png", 0]])
    dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES)
    assert dataset.image_paths()[0].resolve() == (tmp_path / "a" / "0.png").resolve()


def test_image_column_found_by_extension_without_type_suffix(tmp_path):
    write_image(tmp_path / "0.jpg", random_pixels(0, (28, 28)))
    csv_path = write_csv(tmp_path / "train.csv", ["x", "y"], [["0.jpg", 3]])
    dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES)
    assert dataset.image_variable == "Input"
    assert dataset.batch(np.array([0]))["Input"].shape == (1, 1, 28, 28)


def test_rgb_images(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", random_pixels(i, (8, 6, 3)))
    csv_path = write_csv(
        tmp_path / "t.csv", ["x:image", "y:label"], [[f"{i}.png", i] for i in range(3)]
    )
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (3, 8, 6)), LABEL])
    batch = dataset.batch(np.array([2, 1]))["Input"]
    assert batch.shape == (2, 3, 8, 6)
    np.testing.assert_array_equal(batch[0] * 255, decode(tmp_path / "2.png", "RGB"))


def test_image_cache_is_uint8_and_batch_returns_requested_rows_in_order(tmp_path):
    csv_path = mnist_like(tmp_path, n=6)
    dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES, normalize_images=False)
    cache = dataset._arrays["Input"]
    assert cache.dtype == np.uint8
    assert cache.shape == (6, 1, 28, 28)

    rows = np.array([5, 0, 3, 3, 1])
    batch = dataset.batch(rows)
    assert batch["Input"].shape == (5, 1, 28, 28)
    for position, row in enumerate(rows):
        expected = decode(tmp_path / "images" / f"{row}.png", "L").astype(np.float32)
        np.testing.assert_array_equal(batch["Input"][position], expected)
    np.testing.assert_array_equal(batch["CategoricalCrossEntropy_T"][:, 0], rows)


def test_subset_is_a_dataset_of_the_chosen_rows(tmp_path):
    dataset = load_dataset(mnist_like(tmp_path, n=6), NNC_IMAGE_VARIABLES)
    subset = dataset.subset(np.array([4, 1, 5]))
    assert len(subset) == 3
    for name, values in subset.batch(np.array([2, 0])).items():
        np.testing.assert_array_equal(values, dataset.batch(np.array([5, 4]))[name])
    assert subset.image_paths() == [dataset.image_paths()[i] for i in (4, 1, 5)]
    assert subset.table["x:image"].tolist() == ["images/4.png", "images/1.png", "images/5.png"]
    assert len(dataset) == 6  # the original is untouched


def test_empty_batch_and_rows_out_of_range(tmp_path):
    dataset = load_dataset(mnist_like(tmp_path, n=2), NNC_IMAGE_VARIABLES)
    assert dataset.batch(np.array([], dtype=np.int64))["Input"].shape == (0, 1, 28, 28)
    with pytest.raises(IndexError):
        dataset.batch(np.array([2]))


def test_normalization_divides_by_255_exactly(tmp_path):
    csv_path = mnist_like(tmp_path, n=2)
    raw = load_dataset(csv_path, NNC_IMAGE_VARIABLES, normalize_images=False)
    scaled = load_dataset(csv_path, NNC_IMAGE_VARIABLES, normalize_images=True)
    rows = np.array([1, 0])
    raw_pixels = raw.batch(rows)["Input"]
    expected = decode(tmp_path / "images" / "1.png", "L").astype(np.float32)
    np.testing.assert_array_equal(raw_pixels[0], expected)
    assert raw_pixels.max() > 1
    np.testing.assert_array_equal(scaled.batch(rows)["Input"], raw_pixels / np.float32(255))
    # Labels are never scaled.
    np.testing.assert_array_equal(scaled.batch(rows)["CategoricalCrossEntropy_T"][:, 0], [1, 0])


def test_resizing_logs_a_single_warning(tmp_path, caplog):
    rows = []
    for i, size in enumerate([(32, 32), (20, 24), (28, 28), (40, 30)]):
        write_image(tmp_path / f"{i}.png", random_pixels(i, size))
        rows.append([f"{i}.png", i])
    csv_path = write_csv(tmp_path / "train.csv", ["x:image", "y:label"], rows)
    with caplog.at_level(logging.WARNING, logger="nnabla_sgd_influence.data.datasets"):
        dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES, normalize_images=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 of 4 images" in warnings[0].getMessage()
    assert "28x28" in warnings[0].getMessage()
    with Image.open(tmp_path / "0.png") as image:
        expected = np.asarray(image.convert("L").resize((28, 28), bilinear_resample()))
    np.testing.assert_array_equal(dataset.batch(np.array([0]))["Input"][0, 0], expected)
    assert dataset.batch(np.arange(4))["Input"].shape == (4, 1, 28, 28)


def test_no_warning_when_sizes_match(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="nnabla_sgd_influence.data.datasets"):
        load_dataset(mnist_like(tmp_path, n=2), NNC_IMAGE_VARIABLES)
    assert not caplog.records


def test_grayscale_image_replicated_for_rgb_model(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (5, 7)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 1]])
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (3, 5, 7)), LABEL], False)
    pixels = dataset.batch(np.array([0]))["Input"][0]
    gray = decode(tmp_path / "0.png", "L")[0].astype(np.float32)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[channel], gray)


def test_rgb_image_converted_to_gray_for_one_channel_model(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (5, 7, 3)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 1]])
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (1, 5, 7)), LABEL], False)
    pixels = dataset.batch(np.array([0]))["Input"][0]
    np.testing.assert_array_equal(pixels, decode(tmp_path / "0.png", "L"))


def test_rgba_image_drops_alpha(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (5, 7, 4)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 1]])
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (3, 5, 7)), LABEL], False)
    expected = random_pixels(0, (5, 7, 4))[:, :, :3].transpose(2, 0, 1)
    np.testing.assert_array_equal(dataset.batch(np.array([0]))["Input"][0], expected)


def test_palette_image_for_rgb_model(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (5, 7, 3)), mode="P")
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 1]])
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (3, 5, 7)), LABEL], False)
    np.testing.assert_array_equal(
        dataset.batch(np.array([0]))["Input"][0], decode(tmp_path / "0.png", "RGB")
    )


def test_two_dimensional_image_variable(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (5, 7)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 1]])
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (5, 7)), LABEL], False)
    pixels = dataset.batch(np.array([0]))["Input"]
    assert pixels.shape == (1, 5, 7)
    np.testing.assert_array_equal(pixels[0], decode(tmp_path / "0.png", "L")[0])


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    wide = np.array([[0, 257, 65535]], dtype=np.uint16)
    path = tmp_path / "0.png"
    Image.fromarray(wide).save(path)
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 1]])
    dataset = load_dataset(csv_path, [DataVariable("Input", "x", (1, 1, 3)), LABEL], False)
    np.testing.assert_array_equal(dataset.batch(np.array([0]))["Input"][0, 0, 0], [0, 1, 255])


# --------------------------------------------------------------------------------------
# Tabular datasets


def test_tabular_features_ordered_by_index_not_by_column_position(tmp_path):
    header = ["x__2", "y", "x__0", "x__10"] + [f"x__{i}" for i in (1, 3, 4, 5, 6, 7, 8, 9, 11)]
    row_values = {name: float(name[3:]) if name != "y" else 1 for name in header}
    csv_path = write_csv(tmp_path / "t.csv", header, [[row_values[h] for h in header]])
    variables = [DataVariable("x_var", "x", (3, 4)), LABEL]
    dataset = load_dataset(csv_path, variables)

    assert dataset.columns["x_var"] == [f"x__{i}" for i in range(12)]
    assert dataset.image_variable is None
    assert dataset.image_paths() is None
    features = dataset.batch(np.array([0]))["x_var"]
    assert features.shape == (1, 3, 4)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features[0].ravel(), np.arange(12))


def test_tabular_headers_with_name_suffixes_and_float_labels(tmp_path):
    header = ["x__1:petal width", "x__0:sepal length", "y:species"]
    rows = [["0.5", "5.1", "3.0"], ["1.5", "6.2", "1"], [" 2 ", "7", "0.0"]]
    csv_path = write_csv(tmp_path / "iris.csv", header, rows)
    variables = [DataVariable("x_var", "x", (2,)), DataVariable("t", "y", (1,), n_classes=4)]
    dataset = load_dataset(csv_path, variables)
    batch = dataset.batch(np.array([2, 0]))
    np.testing.assert_array_equal(batch["x_var"], np.float32([[7, 2], [5.1, 0.5]]))
    assert batch["t"].shape == (2, 1)
    np.testing.assert_array_equal(batch["t"][:, 0], [0, 3])
    np.testing.assert_array_equal(dataset.labels(), [3, 1, 0])
    assert dataset.columns["x_var"] == ["x__0:sepal length", "x__1:petal width"]


def test_single_feature_column_and_binary_target(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y"], [["0.25", "1"], ["-3", "0.5"]])
    variables = [DataVariable("x_var", "x", (1,)), DataVariable("t", "y", (1,), binary_target=True)]
    dataset = load_dataset(csv_path, variables)
    batch = dataset.batch(np.array([1, 0]))
    np.testing.assert_array_equal(batch["x_var"], [[-3], [0.25]])
    np.testing.assert_array_equal(batch["t"], [[0.5], [1]])
    assert dataset.labels().dtype == np.float32
    np.testing.assert_array_equal(dataset.labels(), [1, 0.5])


def test_comment_columns_are_ignored_and_table_is_kept_as_text(tmp_path):
    csv_path = write_csv(
        tmp_path / "t.csv", ["#note", "x", "y"], [["abc", "1", "2"], ["NA", "3", "4"]]
    )
    before = csv_path.read_bytes()
    dataset = load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])
    assert dataset.table.columns.tolist() == ["#note", "x", "y"]
    assert dataset.table.values.tolist() == [["abc", "1", "2"], ["NA", "3", "4"]]
    assert dataset.labels().tolist() == [2, 4]
    assert csv_path.read_bytes() == before


def test_labels_none_without_label_variable(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x"], [["1"]])
    assert load_dataset(csv_path, [DataVariable("x_var", "x", (1,))]).labels() is None


def test_byte_order_mark_is_ignored(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_bytes("\ufeffx,y\n1,2\n".encode())
    dataset = load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])
    assert dataset.columns["x_var"] == ["x"]


# --------------------------------------------------------------------------------------
# Bad inputs: one test each, asserting file, row and what is expected


def test_missing_csv(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(
        InfluenceError, match=bad_input(["input-val: file not found: ", excerpt_path(missing)])
    ):
        load_dataset(missing, NNC_IMAGE_VARIABLES, role="input-val")


def test_empty_csv(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("")
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "is empty", "header"])
    ):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_header_without_rows(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [])
    with pytest.raises(InfluenceError, match=bad_input([excerpt_path(csv_path), "no data rows"])):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_row_with_more_fields_than_header(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("x,y\n1,2\n3,4,5\n")
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "cannot be read as CSV"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_first_row_with_more_fields_than_header(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("x,y\n1,2,3\n4,5\n")
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "more fields than"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_missing_column_for_data_variable(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["image", "y:label"], [["0.png", 1]])
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [excerpt_path(csv_path), "data 'x'", "variable 'Input'", "'image', 'y:label'"]
        ),
    ):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_feature_count_mismatch(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x__0", "x__1", "y"], [[1, 2, 0]])
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "needs 3 values", "has 2 columns"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (3,)), LABEL])


def test_feature_index_gap(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x__0", "x__2", "y"], [[1, 2, 0]])
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "index 1 is missing"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (2,)), LABEL])


def test_feature_index_not_a_number(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x__0", "x__a", "y"], [[1, 2, 0]])
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "'x__a'", "integer"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (2,)), LABEL])


def test_single_column_for_multi_value_variable(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 0]])
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "needs 4 values", "column 'x'"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (4,)), LABEL])


def test_plain_and_indexed_columns_for_one_variable(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "x__0", "y"], [[1, 2, 0]])
    with pytest.raises(InfluenceError, match=bad_input([excerpt_path(csv_path), "'x', 'x__0'"])):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_image_file_missing(tmp_path):
    csv_path = mnist_like(tmp_path, n=3)
    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [excerpt_path(csv_path), "row 2 (0-based data row)", "'x:image'", "not found", "2.png"]
        ),
    ):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_image_file_not_an_image(tmp_path):
    csv_path = mnist_like(tmp_path, n=3)
    (tmp_path / "images" / "1.png").write_bytes(b"not a png")
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [
                excerpt_path(csv_path),
                "row 1 (0-based data row)",
                "1.png",
                "cannot be read as an image",
            ]
        ),
    ):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_image_cell_empty(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (28, 28)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 0], ["", 1]])
    with pytest.raises(
        InfluenceError,
        match=bad_input([excerpt_path(csv_path), "row 1 (0-based", "empty", "image path"]),
    ):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_image_channels_that_cannot_be_converted(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (5, 7, 3)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 0]])
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [excerpt_path(csv_path), "row 0 (0-based", "0.png", "'RGB'", "needs 4 channel"]
        ),
    ):
        load_dataset(csv_path, [DataVariable("Input", "x", (4, 5, 7)), LABEL])


def test_floating_point_image_mode_is_refused(tmp_path):
    path = tmp_path / "0.tif"
    Image.fromarray(np.zeros((5, 7), dtype=np.float32)).save(path)
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.tif", 0]])
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "row 0", "mode 'F'"])
    ):
        load_dataset(csv_path, [DataVariable("Input", "x", (1, 5, 7)), LABEL])


def test_image_column_for_non_image_variable(tmp_path):
    write_image(tmp_path / "0.png", random_pixels(0, (28, 28)))
    csv_path = write_csv(tmp_path / "t.csv", ["x:image", "y:label"], [["0.png", 0]])
    with pytest.raises(
        InfluenceError,
        match=bad_input([excerpt_path(csv_path), "'x:image'", "shape (784,)", "(C, H, W)"]),
    ):
        load_dataset(csv_path, [DataVariable("Input", "x", (784,)), LABEL])


def test_label_out_of_range(tmp_path):
    csv_path = mnist_like(tmp_path, n=3)
    rows = [["images/0.png", 1], ["images/1.png", 10], ["images/2.png", 2]]
    write_csv(csv_path, ["x:image", "y:label"], rows)
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [excerpt_path(csv_path), "row 1 (0-based data row)", "'y:label'", "'10'", "[0, 10)"]
        ),
    ):
        load_dataset(csv_path, NNC_IMAGE_VARIABLES)


def test_label_negative(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 0], [2, -1]])
    with pytest.raises(
        InfluenceError,
        match=bad_input([excerpt_path(csv_path), "row 1 (0-based", "'-1'", "[0, 10)"]),
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_label_not_an_integer(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y:label"], [[1, 0], [2, "2.5"]])
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [excerpt_path(csv_path), "row 1 (0-based", "'y:label'", "'2.5'", "integer"]
        ),
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_label_not_a_number(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, "cat"]])
    with pytest.raises(
        InfluenceError,
        match=bad_input([excerpt_path(csv_path), "row 0 (0-based", "'y'", "'cat'", "number"]),
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_binary_target_out_of_range(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 1], [1, 0], [1, 2]])
    variables = [DataVariable("x_var", "x", (1,)), DataVariable("t", "y", (1,), binary_target=True)]
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "row 2 (0-based", "'2'", "[0, 1]"])
    ):
        load_dataset(csv_path, variables)


def test_feature_not_a_number(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x__0", "x__1", "y"], [[1, 2, 0], [3, "abc", 1]])
    with pytest.raises(
        InfluenceError,
        match=bad_input(
            [excerpt_path(csv_path), "row 1 (0-based data row)", "'x__1'", "'abc'", "number"]
        ),
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (2,)), LABEL])


def test_feature_cell_empty(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x__0", "x__1", "y"], [[1, 2, 0], [3, "", 1]])
    with pytest.raises(
        InfluenceError,
        match=bad_input([excerpt_path(csv_path), "row 1 (0-based", "'x__1'", "empty"]),
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (2,)), LABEL])


def test_short_row_leaves_an_empty_cell(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("x,y\n1,2\n3\n")
    with pytest.raises(
        InfluenceError, match=bad_input([excerpt_path(csv_path), "row 1 (0-based", "'y'", "empty"])
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_feature_not_finite(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 0], ["nan", 1], ["inf", 2]])
    with pytest.raises(
        InfluenceError,
        match=bad_input([excerpt_path(csv_path), "row 1 (0-based", "'nan'", "finite"]),
    ):
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])


def test_error_messages_are_single_lines(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("x,y\n1,2\n3,4,5\n")
    with pytest.raises(InfluenceError) as caught:
        load_dataset(csv_path, [DataVariable("x_var", "x", (1,)), LABEL])
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------
# Encodings and line ends of CSVs saved on Windows


def write_text(path: Path, text: str, encoding: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    "encoding, newline",
    [("utf-8", "\n"), ("utf-8-sig", "\r\n"), ("cp932", "\r\n"), ("cp932", "\n")],
)
def test_japanese_image_csv_in_each_encoding(tmp_path, encoding, newline):
    """Excel in Japan saves cp932 with CRLF; folders and files may have Japanese names and
    Windows separators."""
    folder = tmp_path / "画像"
    for i in range(3):
        write_image(folder / f"数字_{i}.png", random_pixels(i, (28, 28)))
    lines = ["x:image,y:label"] + [f"画像\\数字_{i}.png,{i}" for i in range(3)]
    csv_path = write_text(tmp_path / "学習.csv", newline.join(lines) + newline, encoding)
    dataset = load_dataset(csv_path, NNC_IMAGE_VARIABLES)
    expected = "utf-8-sig" if encoding == "utf-8-sig" else encoding
    assert dataset.csv_format == CsvFormat(expected, newline)
    assert dataset.image_paths() == [folder / f"数字_{i}.png" for i in range(3)]
    np.testing.assert_array_equal(dataset.labels(), [0, 1, 2])


def test_an_explicit_encoding_wins_and_is_checked(tmp_path):
    text = "x__0,y,#note\n1.5,0,café\n2.5,1,ok\n"
    csv_path = write_text(tmp_path / "t.csv", text, "latin-1")
    variables = [DataVariable("x", "x", (1,)), DataVariable("y", "y", (1,), n_classes=2)]
    with pytest.raises(InfluenceError, match="neither UTF-8 nor cp932.*--encoding"):
        load_dataset(csv_path, variables)
    dataset = load_dataset(csv_path, variables, encoding="latin-1")
    assert dataset.csv_format.encoding == "iso8859-1"
    np.testing.assert_array_equal(dataset.batch(np.array([1]))["x"], [[2.5]])
    utf16 = load_dataset(write_text(tmp_path / "u.csv", text, "utf-16"), variables)
    assert utf16.csv_format == CsvFormat("utf-16", "\n") and len(utf16) == 2
    nul = write_text(tmp_path / "n.csv", "x__0,y\n1,\0\n", "utf-8")
    with pytest.raises(InfluenceError, match="not a text file"):
        load_dataset(nul, variables)
    with pytest.raises(InfluenceError, match="is not utf-8 text"):
        load_dataset(
            write_text(tmp_path / "j.csv", "x__0,y,#note\n1,0,日本\n", "cp932"),
            variables,
            encoding="utf-8",
        )
    with pytest.raises(InfluenceError, match="unknown text encoding 'klingon'"):
        check_encoding("klingon")


def test_raw_records_match_the_table_rows(tmp_path):
    text = 'a,b\r\n1,"two\r\nlines"\r\n\r\n"3,""x""",4\r\n   \r\n,\r\n'
    csv_path = write_text(tmp_path / "r.csv", text, "ascii")
    form = detect_format(csv_path, "input-train")
    assert form == CsvFormat("utf-8", "\r\n")  # ASCII is UTF-8
    header, records = read_records(csv_path, form)
    assert header == "a,b"
    assert records == ['1,"two\r\nlines"', '"3,""x""",4', ","]
    table, _ = read_table(csv_path, "input-train")
    assert len(table) == len(records)
    assert table.values.tolist() == [["1", "two\r\nlines"], ['3,"x"', "4"], ["", ""]]
