"""The public Python API: compute_influence returns exactly what the plugins write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import read_csv, run_in_process

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
    written = np.empty(len(result.scores))
    for row in read_csv(out):
        written[int(row["datasource_index"])] = float(row["influence"])
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


def test_readme_example_runs(samples_dir):
    """The README's Python example, as written there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nfrom nnabla_sgd_influence import compute_influence")
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "most harmful rows:" in completed.stdout
