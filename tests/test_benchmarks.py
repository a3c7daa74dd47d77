"""The benchmark scripts: their building blocks on hand-made inputs, and their ``--smoke`` runs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from nnabla_sgd_influence.data.datasets import load_dataset
from nnabla_sgd_influence.influence.graphs import GraphCache
from nnabla_sgd_influence.influence.hvp import AutodiffPass, per_row_reference
from nnabla_sgd_influence.influence.parameters import ParameterSet
from nnabla_sgd_influence.nnp.model import load_model

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cleansing():
    return _script("cleansing")


@pytest.fixture(scope="module")
def bench():
    return _script("bench_speed")


# --------------------------------------------------------------------------------------
# cleansing.py: rankings and the flipped-row share


def test_flipped_share_counts_flipped_rows_among_the_first_k(cleansing):
    order = np.array([3, 1, 4, 0, 2])
    flipped = np.array([1, 2])
    assert cleansing.flipped_share(order, flipped) == 0.5  # k = 2: {3, 1}
    assert cleansing.flipped_share(order, flipped, k=3) == pytest.approx(1 / 3)
    assert cleansing.flipped_share(order, flipped, k=5) == 0.4
    assert cleansing.flipped_share(np.array([2, 1, 0]), flipped) == 1.0
    assert cleansing.flipped_share(order, np.array([], dtype=int)) == 0.0
    assert cleansing.flipped_count(np.array([0, 1, 2]), flipped) == 2


def test_harmful_first_puts_the_most_negative_influence_first(cleansing):
    scores = np.array([0.2, -0.5, 0.0, -0.1, -0.5])
    np.testing.assert_array_equal(cleansing.harmful_first(scores), [1, 4, 3, 2, 0])


def test_loss_baseline_puts_the_highest_loss_first(cleansing):
    losses = np.array([0.1, 2.0, 0.5, 3.0])
    np.testing.assert_array_equal(cleansing.highest_loss_first(losses), [3, 1, 2, 0])


def test_random_ranking_is_a_seeded_permutation_with_the_expected_share(cleansing):
    first = cleansing.random_order(100, 1)
    np.testing.assert_array_equal(np.sort(first), np.arange(100))
    np.testing.assert_array_equal(first, cleansing.random_order(100, 1))
    assert not np.array_equal(first, cleansing.random_order(100, 2))
    # The samples picked their flipped rows with RandomState(1): the ranking must not.
    assert not np.array_equal(first, np.random.RandomState(1).permutation(100))
    flipped = np.arange(10)  # k / N = 0.1
    shares = [cleansing.flipped_share(cleansing.random_order(100, s), flipped) for s in range(400)]
    assert np.mean(shares) == pytest.approx(0.1, abs=0.01)


def test_predicted_labels_by_loss_head(cleansing):
    probabilities = np.array([[0.7], [0.2], [0.51]])
    np.testing.assert_array_equal(
        cleansing.predicted_labels(probabilities, "BinaryCrossEntropy"), [1, 0, 1]
    )
    logits = np.array([[-0.1], [2.0]])
    np.testing.assert_array_equal(cleansing.predicted_labels(logits, "SigmoidCrossEntropy"), [0, 1])
    softmax = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    np.testing.assert_array_equal(
        cleansing.predicted_labels(softmax, "CategoricalCrossEntropy"), [1, 0]
    )


def test_report_formatting(cleansing):
    assert cleansing.mean_std([0.9, 1.0], scale=100.0) == "95.00 ± 7.07"
    assert cleansing.mean_std([3.0], digits=1) == "3.0 ± 0.0"
    assert cleansing.markdown_table(["a", "b"], [["1", "2"]]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
    ]
    assert cleansing.tile_caption(4, 7, 1, -0.0123) == "row 4: y=7\nflipped (was 1)\n-1.23e-02"
    assert cleansing.tile_caption(5, 3, None, 2e-4) == "row 5: y=3\nnot flipped\n2.00e-04"


@pytest.mark.parametrize(
    "model, data", [("cancer_logreg_noisy", "cancer"), ("digits_cnn_noisy", "digits")]
)
def test_evaluator_reproduces_the_saved_test_accuracy(cleansing, samples_dir, model, data):
    loaded = cleansing.load_case(cleansing.Case(model, data, 32), samples_dir)
    params = ParameterSet(loaded.model)
    accuracy = cleansing.Evaluator(loaded.model, params, loaded.test).accuracy()
    metrics = json.loads((samples_dir / "models" / model / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert len(loaded.flipped) == int(round(0.1 * len(loaded.train)))


def test_training_loss_baseline_matches_the_closed_form(cleansing, samples_dir):
    loaded = cleansing.load_case(cleansing.Case("cancer_logreg_noisy", "cancer", 64), samples_dir)
    model = loaded.model
    params = ParameterSet(model)
    losses = cleansing.Evaluator(model, params, loaded.train).losses()
    w = next(model.parameters[n] for n in model.trainable if n.endswith("/W")).ravel()
    b = next(model.parameters[n] for n in model.trainable if n.endswith("/b")).ravel()[0]
    batch = loaded.train.batch(np.arange(len(loaded.train)))
    x = batch["Input"].astype(np.float64)
    y = loaded.train.labels().astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    expected = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------
# bench_speed.py: helpers


def test_rank_correlation_and_relative_difference(bench):
    a = np.array([0.3, -1.0, 2.0, 0.5])
    assert bench.rank_correlation(a, a * 5 + 1) == pytest.approx(1.0)
    assert bench.rank_correlation(a, -a) == pytest.approx(-1.0)
    result = (np.array([1.0, -2.0]), [np.array([4.0, 0.0])])
    shifted = (np.array([1.0, -2.2]), [np.array([4.0, 0.4])])
    assert bench.max_relative_difference(result, result) == 0.0
    assert bench.max_relative_difference(result, shifted) == pytest.approx(0.1)


def test_memory_ratio_without_growth_is_not_a_number(bench):
    # A small run may load without a page of RSS growth: no division by zero.
    assert bench._ratio(1.3, 0.0) == "n/a"
    assert bench._ratio(1.0, 0.5) == "2.00"


def test_median_seconds_respects_repeats_and_budget(bench):
    calls: List[int] = []
    bench.median_seconds(lambda: calls.append(1), repeats=3, budget=1e9)
    assert len(calls) == 3
    calls.clear()
    bench.median_seconds(lambda: calls.append(1), repeats=3, budget=0.0)
    assert len(calls) == 1  # one call always; the budget is spent after it
    calls.clear()
    assert bench.median_seconds(lambda: calls.append(1), 3, 0.0, measured=[5.0]) == 5.0
    assert calls == []


def test_target_note_says_met_or_by_how_much_missed(bench):
    assert bench.target_note(12.8, 4.0, higher_is_better=False) == "missed by 3.2x"
    assert bench.target_note(3.0, 4.0, higher_is_better=False) == "met (1.3x margin)"
    assert bench.target_note(42.6, 10.0, higher_is_better=True) == "met (4.3x margin)"
    assert bench.target_note(5.0, 10.0, higher_is_better=True) == "missed by 2.0x"


def test_format_table_aligns_columns(bench):
    lines = bench.format_table(["model", "x"], [["a", "1.5"], ["bbb", "10.25"]])
    assert lines == ["model      x", "-----  -----", "a        1.5", "bbb    10.25"]


def test_batch_of_one_loop_equals_per_row_reference_without_batchnorm(bench, samples_dir):
    model = load_model(samples_dir / "models" / "cancer_mlp" / "results.nnp")
    train = load_dataset(samples_dir / "cancer" / "train.csv", model.data_variables)
    graphs = GraphCache(model, ParameterSet(model))
    batch = train.batch(np.arange(10, 22))
    v = bench.random_direction(model, seed=3)
    looped = bench.batch_of_one_loop(AutodiffPass(graphs), bench.one_row_graph(graphs), batch, v)
    reference = per_row_reference(graphs, batch, v)
    assert np.max(np.abs(reference[0])) > 0
    assert bench.max_relative_difference(reference, looped) < 1e-4


def test_batch_of_one_retrace_scores_the_retraced_rows_and_restores_parameters(bench, samples_dir):
    from nnabla_sgd_influence.influence.training import retrain

    model = load_model(samples_dir / "models" / "digits_cnn" / "results.nnp")
    train = load_dataset(samples_dir / "digits" / "train.csv", model.data_variables)
    train = train.subset(np.arange(40))
    graphs = GraphCache(model, ParameterSet(model))
    run = retrain(graphs, model.solver, train, batch_size=32, seed=0)
    before = {name: p.d.copy() for name, p in graphs.params.variables.items()}
    u = bench.random_direction(model, seed=4)
    scores = bench.batch_of_one_retrace(graphs, train, run, u)
    assert np.count_nonzero(scores) == 40 and np.all(np.isfinite(scores))
    for name, p in graphs.params.variables.items():
        np.testing.assert_array_equal(p.d, before[name])


def test_generated_images_load_as_an_nnc_image_dataset(bench, samples_dir, tmp_path):
    sources = [np.full((28, 28), 100, np.uint8), np.zeros((28, 28), np.uint8)]
    rows = bench.generate_images(tmp_path, 5, sources, [3, 8], seed=0)
    assert [label for _, label in rows] == [3, 8, 3, 8, 3]
    bench.write_image_csv(tmp_path / "train.csv", rows[:4])
    model = load_model(samples_dir / "models" / "digits_cnn" / "results.nnp")
    data = load_dataset(tmp_path / "train.csv", model.data_variables, model.normalize_images)
    assert len(data) == 4
    np.testing.assert_array_equal(data.labels(), [3, 8, 3, 8])
    pixels = data.batch(np.arange(4))["Input"]
    assert pixels.shape == (4, 1, 28, 28)
    assert abs(pixels[0].mean() - 100 / 255) < 0.02  # shifted + noise around the source
    assert pixels[1].mean() < 0.05


def test_per_thousand_growth(bench):
    small = {"rows": 2000, "peak_mb": 160.0}
    large = {"rows": 20000, "peak_mb": 178.0}
    assert bench.per_thousand(small, large, lambda r: r["peak_mb"]) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# Every script, --smoke, as a user runs it


def _run(script: str, output: Path, size: str = "--quick") -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), size, "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def _markdown_rows(text: str, first_cell: str) -> Dict[str, List[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            rows[cells[0]] = cells
    return rows


@pytest.mark.bench
def test_bench_speed_smoke_run(samples_dir, tmp_path):
    """Every section runs (on two models and 64 rows); the numbers are make bench's to report."""
    stdout = _run("bench_speed.py", tmp_path, "--smoke")
    report = (tmp_path / "bench_speed.txt").read_text(encoding="utf-8")
    assert report.strip() == stdout.strip()
    # Storage: 64 rows at batch 32 are 2 steps; exact keeps one snapshot per step.
    storage = re.search(r"digits_cnn, 64 rows\s+2\s+([\d.]+) MB\s+([\d.]+) MB\s+(\d+)", report)
    assert storage, report
    assert float(storage.group(1)) >= 27_706 * 4 / 1e6  # at least the float32 parameters
    assert int(storage.group(3)) == 2
    assert float(storage.group(2)) == pytest.approx(2 * float(storage.group(1)), rel=0.02)
    # Each table has its rows (speed ratios are the report's, not the test's).
    assert re.search(r"cancer_mlp\s+8\s+[\d.]+x\s+[\d.]+x\s+[\d.e+-]+", report), report
    assert re.search(r"^digits_cnn\s+27,706\s+2\s", report, re.MULTILINE), report
    assert "batch-of-1 method" in report and report.count("whole pass") == 2
    # Memory: the uint8 cache of 64 images of 28x28 is 0.05 MB.
    assert re.search(r"^64\s.*\s0\.05\s+[\d.]+$", report, re.MULTILINE), report


@pytest.mark.bench
def test_cleansing_smoke_run(samples_dir, tmp_path):
    stdout = _run("cleansing.py", tmp_path, "--smoke")
    report = (tmp_path / "cleansing.md").read_text(encoding="utf-8")
    assert report == stdout
    for name in ("digits_cnn_noisy", "cancer_mlp_noisy", "cancer_logreg_noisy"):
        assert (tmp_path / f"cleansing_{name}.png").stat().st_size > 10_000
    assert (tmp_path / "harmful_digits.png").stat().st_size > 50_000
    shares = _markdown_rows(report, "cancer_")
    logreg = shares["cancer_logreg_noisy"]
    assert logreg[1:3] == ["341", "34"]
    assert logreg[5] == "0.100"  # random, expected k/N
    influence_share = float(logreg[3].split("±")[0])
    assert 0.5 < influence_share <= 1.0  # far above random on the noisy logistic regression
    # Nothing removed: every method is the same run, so the accuracies agree.
    zero = [line for line in report.splitlines() if line.startswith("| 0 |")]
    assert len(zero) == 3
    for line in zero:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == cells[3] == cells[5]


@pytest.mark.bench
def test_cleansed_retraining_smoke_run(samples_dir, tmp_path):
    stdout = _run("cleansed_retraining.py", tmp_path, "--smoke")
    assert (tmp_path / "cleansed_retraining.md").read_text(encoding="utf-8") == stdout
    (row,) = _markdown_rows(stdout, "cancer_").values()
    assert row[2] == "34 of 341"
    hits = int(row[3].split(" of ")[0])
    assert hits > 3 * 34 / 10  # far above the 10 % a random choice would find
    for cell in row[4:6]:
        assert 50.0 < float(cell.split(" ± ")[0]) <= 100.0
    assert (tmp_path / "cleansed" / "cancer_logreg_noisy_influence_cleansed.csv").is_file()


@pytest.mark.bench
def test_bench_parallel_smoke_run(samples_dir, tmp_path):
    """The three ways run and write the same bytes (speed-ups at 64 rows mean nothing)."""
    stdout = _run("bench_parallel.py", tmp_path, "--smoke")
    assert (tmp_path / "bench_parallel.txt").read_text(encoding="utf-8") == stdout
    assert "CSVs byte-identical across the runs: digits_cnn yes" in stdout
    for way in ("1 process", "2 workers", "2 MPI ranks"):
        assert re.search(rf"{way}\s+[\d.]+\s+[\d.]+x\s+[\d.]+$", stdout, re.MULTILINE), stdout
