"""Trials in local worker processes (--workers): the same bytes, one display, clean ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import REPO, TABULAR_SCRIPT, error_lines, plugin_env

from nnabla_sgd_influence import InfluenceError, compute_influence
from nnabla_sgd_influence.arguments import InfluenceArguments
from nnabla_sgd_influence.parallel import default_workers, physical_cores, units_of_trial


@pytest.fixture(scope="module")
def cancer(samples_dir):
    folder = samples_dir / "cancer"
    return (
        samples_dir / "models" / "cancer_mlp" / "results.nnp",
        folder / "train.csv",
        folder / "val.csv",
    )


def test_workers_give_the_bytes_of_one_process(cancer):
    one = compute_influence(*cancer, n_trials=3, seed=5, workers=1, progress=False)
    events = []
    two = compute_influence(
        *cancer, n_trials=3, seed=5, workers=2, progress=lambda *event: events.append(event)
    )
    np.testing.assert_array_equal(two.scores, one.scores)
    np.testing.assert_array_equal(two.per_trial, one.per_trial)
    assert two.seeds == [5, 6, 7] and [s.rows.tolist() for s in two.steps] == [
        s.rows.tolist() for s in one.steps
    ]
    # One display for all trials: every step of every trial, counted once.
    total = 3 * units_of_trial(341, 114, InfluenceArguments(batch_size=32))
    assert events[-1] == ("3 trials on 2 workers", total, total)
    assert len(events) == total


def test_a_worker_error_is_the_run_error(tmp_path, samples_dir):
    """hvp autodiff on a layer nnabla cannot differentiate twice fails inside each worker."""
    from test_engine import _MIDDLE_LAYERS, _ArrayDataset, _write_model

    path = tmp_path / "flip.nnp"
    _write_model(path, _MIDDLE_LAYERS["Flip"])
    train, val = _ArrayDataset(16, 0), _ArrayDataset(8, 1)
    with pytest.raises(InfluenceError, match="'Mirror' \\(Flip\\) has no second-order"):
        compute_influence(path, train, val, batch_size=8, n_trials=2, hvp="autodiff", workers=2)
    assert not any(p.name.startswith("sgd_influence_") for p in Path(tmp_path).iterdir())


def test_default_workers_are_bounded_by_cores_and_trials():
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert default_workers(1) == 1
    assert default_workers(1000) == cores
    if hasattr(os, "sched_getaffinity"):
        assert cores <= len(os.sched_getaffinity(0))


def _start_workers_run(samples_dir: Path, tmp_path: Path):
    """The tabular plugin on 2 workers (6 trials, mode exact), once a trial has its folder."""
    cancer = samples_dir / "cancer"
    temp, out = tmp_path / "temp", tmp_path / "out"
    temp.mkdir()
    out.mkdir()
    args = [
        "-m", samples_dir / "models" / "cancer_mlp" / "results.nnp", "-t", cancer / "train.csv",
        "-v", cancer / "val.csv", "-o", out / "o.csv", "-nt", 6, "--workers", 2, "-bs", 8,
        "--mode", "exact", "--epochs", 3, "--temp-dir", temp,
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(TABULAR_SCRIPT), *map(str, args)],
        cwd=REPO,
        env=plugin_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to signal like a terminal does
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(temp.glob("sgd_influence_*/trial_*")):
        time.sleep(0.05)
    return process, temp, out


def test_ctrl_c_ends_every_worker_and_leaves_nothing(samples_dir, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it."""
    process, temp, out = _start_workers_run(samples_dir, tmp_path)
    try:
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr[-2000:]
    assert error_lines(stderr) == ["interrupted"], stderr[-2000:]
    assert "Traceback" not in stderr
    assert list(temp.iterdir()) == [] and list(out.iterdir()) == []
    deadline = time.monotonic() + 10  # what is left of the group must end on its own
    while time.monotonic() < deadline:
        left = subprocess.run(
            ["pgrep", "-a", "-g", str(process.pid)], capture_output=True, text=True
        )
        if not left.stdout.strip():
            break
        time.sleep(0.1)
    assert left.stdout.strip() == "", f"processes were left running: {left.stdout}"


def test_a_killed_worker_ends_the_run_on_one_line(samples_dir, tmp_path):
    """A worker the system kills (as the out-of-memory killer does): exit 1, nothing left."""
    process, temp, out = _start_workers_run(samples_dir, tmp_path)
    try:
        workers = subprocess.run(
            ["pgrep", "-P", str(process.pid), "-f", "spawn_main"], capture_output=True, text=True
        ).stdout.split()
        assert workers, "no worker process found"
        os.kill(int(workers[0]), signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, stderr[-2000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: a worker process was killed by SIGKILL")
    assert "fewer --workers" in lines[0] and "Traceback" not in stderr
    assert list(temp.iterdir()) == [] and list(out.iterdir()) == []
