"""The public Python API: compute_influence returns exactly what the plugins write."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import copy_digits, run_in_process, scores_by_row

import nnabla_sgd_influence
from nnabla_sgd_influence import (
    InfluenceArguments,
    InfluenceError,
    compute_influence,
    load_dataset,
    load_model,
    run_trials,
)


@pytest.fixture(scope="module")
def cancer(samples_dir):
    folder = samples_dir / "cancer"
    model = samples_dir / "models" / "cancer_mlp_noisy" / "results.nnp"
    return model, folder / "train_noisy.csv", folder / "val.csv"


def test_scores_are_the_values_the_plugin_writes(cancer, tmp_path):
    model, train, val = cancer
    result = compute_influence(model, train, val, batch_size=32, seed=3, n_trials=2)
    out = tmp_path / "out.csv"
    completed = run_in_process(
        "tabular", "-m", model, "-t", train, "-v", val, "-o", out, "-bs", 32, "-s", 3, "-nt", 2
    )
    assert completed.returncode == 0, completed.stderr
    written = scores_by_row(out)
    np.testing.assert_array_equal(result.scores, written)
    assert result.per_trial.shape == (2, len(written)) and result.seeds == [3, 4]
    np.testing.assert_array_equal(result.scores, (result.per_trial[0] + result.per_trial[1]) / 2)
    ranking = result.ranking()
    assert np.all(np.diff(result.scores[ranking]) >= 0)


def test_loaded_model_and_datasets_are_accepted(cancer):
    model_path, train_path, val_path = cancer
    model = load_model(model_path)
    train = load_dataset(train_path, model.data_variables, model.normalize_images)
    val = load_dataset(val_path, model.data_variables, model.normalize_images, role="input-val")
    from_paths = compute_influence(model_path, train_path, val_path, progress=False)
    from_objects = compute_influence(model, train, val, progress=False)
    np.testing.assert_array_equal(from_paths.scores, from_objects.scores)


def test_progress_callback_sees_every_phase(cancer):
    seen = []
    compute_influence(
        *cancer, batch_size=128, n_trials=2, progress=lambda *event: seen.append(event)
    )
    phases = {phase for phase, _, _ in seen}
    assert phases == {
        f"trial {t}/2 {phase}"
        for t in (1, 2)
        for phase in ("retraining", "validation gradient", "retrace")
    }
    assert ("trial 2/2 retrace", 3, 3) in seen  # 341 rows in batches of 128: three steps


def test_run_trials_is_the_lower_level_entry(cancer, tmp_path):
    model_path, train_path, val_path = cancer
    model = load_model(model_path)
    train = load_dataset(train_path, model.data_variables)
    val = load_dataset(val_path, model.data_variables, role="input-val")
    arguments = InfluenceArguments(batch_size=64, seed=1, n_trials=2)
    result = run_trials(model, train, val, arguments, tmp_path)
    np.testing.assert_array_equal(
        result.scores, compute_influence(*cancer, batch_size=64, seed=1, n_trials=2).scores
    )
    assert list(tmp_path.iterdir()) == []  # each trial's folder is removed


class Rows:
    """Training or validation rows that are not a Dataset: only len() and batch(rows)."""

    def __init__(self, dataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def batch(self, rows):
        return self._dataset.batch(rows)


def test_any_rows_with_len_and_batch_are_scored_but_not_written_back(cancer, tmp_path):
    model_path, train_path, val_path = cancer
    model = load_model(model_path)
    train = load_dataset(train_path, model.data_variables)
    val = load_dataset(val_path, model.data_variables, role="input-val")
    result = compute_influence(model, Rows(train), Rows(val), progress=False)
    np.testing.assert_array_equal(result.scores, compute_influence(*cancer, progress=False).scores)
    assert result.images_read == () and result.files_read == (("the model file", str(model_path)),)
    with pytest.raises(InfluenceError, match="not read from a CSV"):
        result.write_cleansed_csv(tmp_path / "clean.csv", 1)


def test_rows_that_only_look_like_a_dataset_are_not_written_back(cancer, tmp_path):
    """A cleansed CSV needs a Dataset (its records, header and encoding), not an object that
    merely has some of its attributes."""
    model_path, train_path, _ = cancer
    train = load_dataset(train_path, load_model(model_path).data_variables)
    look_alike = Rows(train)
    look_alike.csv_format = train.csv_format
    result = nnabla_sgd_influence.InfluenceResult(
        scores=np.zeros(len(train)),
        per_trial=np.zeros((1, len(train))),
        seeds=[0],
        validation_losses=np.zeros(1),
        hvp_method="autodiff",
        dataset=look_alike,
    )
    with pytest.raises(InfluenceError, match="not read from a CSV"):
        result.write_cleansed_csv(tmp_path / "clean.csv", 1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"mode": "every"}, "mode must be one of"),
        ({"seed": -1}, "seed must be in"),
    ],
)
def test_bad_options_raise_one_line_errors(cancer, options, message):
    with pytest.raises(InfluenceError, match=message):
        compute_influence(*cancer, **options)


def test_importing_the_package_loads_neither_nnabla_nor_numpy():
    code = (
        "import sys, nnabla_sgd_influence as p; assert 'compute_influence' in dir(p); "
        "assert 'nnabla' not in sys.modules and 'numpy' not in sys.modules"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_public_names():
    assert set(nnabla_sgd_influence.__all__) >= {
        "compute_influence",
        "InfluenceResult",
        "InfluenceArguments",
        "load_model",
        "load_dataset",
        "run_trial",
    }
    for name in nnabla_sgd_influence.__all__:
        assert getattr(nnabla_sgd_influence, name) is not None
    with pytest.raises(AttributeError):
        nnabla_sgd_influence.no_such_name  # noqa: B018


@pytest.mark.system
def test_readme_example_runs(samples_dir, tmp_path):
    """The README's Python example, as written there: it prints what the README shows, and
    writes its cleansed CSV to a new temporary folder (here, under the test's ``TMPDIR``)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python", readme.index("## Python API"))
    code = readme[readme.index("\n", start) + 1 : readme.index("```", start + 10)]
    shown_from = readme.index("```\n", readme.index("prints", start + len(code))) + 4
    shown = readme[shown_from : readme.index("```", shown_from)]
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    number = r"-?\d+\.\d+(?:e[-+]\d+)?"
    assert re.sub(number, "N", completed.stdout) == re.sub(number, "N", shown)
    printed, expected = (np.array(re.findall(number, t), float) for t in (completed.stdout, shown))
    np.testing.assert_allclose(printed, expected, rtol=1e-5)  # float32 rounding may differ
    (written,) = tmp_path.glob("*/train_cleansed.csv")
    assert len(written.read_text().splitlines()) == 1 + 307


# --------------------------------------------------------------------------------------
# The result's writers follow the plugins' output rules; counts are checked, never cut


@pytest.fixture(scope="module")
def digits(samples_dir, tmp_path_factory):
    """A copy of 30 training and 10 validation digits, their images and the model, and the
    result computed from their paths."""
    root = tmp_path_factory.mktemp("digits")
    files = {"model": root / "results.nnp"}
    files["model"].write_bytes((samples_dir / "models" / "digits_cnn" / "results.nnp").read_bytes())
    files.update(copy_digits(samples_dir, root, {"train": 30, "val": 10}))
    files["train image"] = sorted((root / "images").glob("train_*"))[3]
    files["val image"] = sorted((root / "images").glob("val_*"))[0]
    result = compute_influence(
        files["model"], files["train"], files["val"], batch_size=16, progress=False
    )
    return result, files, root


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


WRITERS = {
    "cleansed CSV": lambda result, path: result.write_cleansed_csv(path, 2),
    "tile": lambda result, path: result.write_tile(path, 2),
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize(
    "target, words",
    [
        ("train", "is the input-train file"),
        ("val", "is the input-val file"),
        ("model", "is the model file"),
        ("train image", "is the image of input-train row 3"),
        ("val image", "is the image of input-val row 0"),
    ],
)
def test_the_writers_never_replace_a_file_the_run_read(digits, writer, target, words):
    result, files, root = digits
    before = snapshot(root)
    with pytest.raises(InfluenceError, match=words):
        WRITERS[writer](result, files[target])
    assert snapshot(root) == before


@pytest.mark.parametrize("writer", list(WRITERS))
def test_the_writers_refuse_a_symbolic_link(digits, tmp_path, writer):
    result = digits[0]
    target = tmp_path / "target"
    target.write_text("kept\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(InfluenceError, match="is a symbolic link"):
        WRITERS[writer](result, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and target.read_text() == "kept\n"


def test_a_result_of_loaded_objects_still_refuses_the_files_they_came_from(digits):
    _, files, root = digits
    model = load_model(files["model"])
    train = load_dataset(files["train"], model.data_variables, model.normalize_images)
    val = load_dataset(files["val"], model.data_variables, model.normalize_images, "input-val")
    result = compute_influence(model, train, val, batch_size=16, progress=False)
    before = snapshot(root)
    for target, words in (("model", "model file"), ("val", "input-val"), ("train image", "image")):
        with pytest.raises(InfluenceError, match=words):
            result.write_cleansed_csv(files[target], 1)
    assert snapshot(root) == before


def test_a_result_of_run_trials_refuses_its_training_csv(digits, tmp_path):
    _, files, root = digits
    model = load_model(files["model"])
    train = load_dataset(files["train"], model.data_variables, model.normalize_images)
    val = load_dataset(files["val"], model.data_variables, model.normalize_images, "input-val")
    result = run_trials(model, train, val, InfluenceArguments(batch_size=16), tmp_path)
    before = snapshot(root)
    for target in ("train", "train image"):
        with pytest.raises(InfluenceError, match="input-train"):
            result.write_tile(files[target], 1)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda r, p: r.harmful(-1), "k must be from 0 to 30 (the training rows), got -1"),
        (lambda r, p: r.helpful(-1), "k must be from 0 to 30"),
        (lambda r, p: r.harmful(31), "got 31"),
        (lambda r, p: r.helpful(31), "got 31"),
        (lambda r, p: r.harmful(2.0), "k must be an integer, got 2.0"),
        (lambda r, p: r.harmful(True), "k must be an integer, got True"),
        (lambda r, p: r.write_tile(p, 0), "k must be from 1 to 30"),
        (lambda r, p: r.write_tile(p, -1), "k must be from 1 to 30"),
        (lambda r, p: r.write_tile(p, 31), "got 31"),
        (lambda r, p: r.write_cleansed_csv(p, -1), "remove_top must be 0"),
        (lambda r, p: r.write_cleansed_csv(p, 30), "would leave no training rows"),
    ],
)
def test_counts_of_rows_out_of_range_are_refused(digits, tmp_path, call, words):
    result = digits[0]
    with pytest.raises(InfluenceError, match=re.escape(words)):
        call(result, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_counts_in_range_are_the_ranking(digits, tmp_path):
    result = digits[0]
    order = np.argsort(result.scores, kind="stable")
    np.testing.assert_array_equal(result.harmful(30), order)
    np.testing.assert_array_equal(result.helpful(3), order[::-1][:3])
    assert len(result.harmful(0)) == 0
    result.write_tile(tmp_path / "tile.png", 30)
    assert (tmp_path / "tile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("position", ["model", "input_train", "input_val"])
@pytest.mark.parametrize("value", [["a.csv"], None, 5])
def test_inputs_of_the_wrong_type_are_refused_before_any_work(cancer, monkeypatch, position, value):
    from nnabla_sgd_influence import api

    def no_loading(*_args, **_kwargs):
        raise AssertionError("an input was loaded")

    monkeypatch.setattr(api, "load_model", no_loading)
    monkeypatch.setattr(api, "load_dataset", no_loading)
    inputs = dict(zip(("model", "input_train", "input_val"), cancer))
    inputs[position] = value
    kind = "a .nnp file or a loaded NnpModel" if position == "model" else "a CSV file"
    with pytest.raises(InfluenceError) as caught:
        compute_influence(**inputs)
    message = str(caught.value)
    assert message.startswith(f"{position} must be the path of {kind}"), message
    assert message.endswith("None" if value is None else repr(value)) and "\n" not in message


@pytest.mark.parametrize(
    "options, message",
    [
        ({"workers": 2.5}, "workers must be a positive integer, got 2.5"),
        ({"workers": True}, "workers must be a positive integer, got True"),
        ({"context": "gpu"}, "unknown context 'gpu'"),
        ({"temp_dir": 5}, "temp_dir must be the path of a folder"),
    ],
)
def test_how_to_run_is_checked_before_any_input_is_read(cancer, monkeypatch, options, message):
    """A workers count that is not a whole number is refused, not rounded, and before the
    model and the CSVs are read."""
    from nnabla_sgd_influence import api

    def no_loading(*_args, **_kwargs):
        raise AssertionError("an input was loaded")

    monkeypatch.setattr(api, "load_model", no_loading)
    monkeypatch.setattr(api, "load_dataset", no_loading)
    with pytest.raises(InfluenceError, match=re.escape(message)):
        compute_influence(*cancer, n_trials=2, **options)
