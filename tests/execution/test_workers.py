"""Trials in local worker processes (--workers): the same bytes, one display, clean ends.

The process tests run the tabular plugin on 2 workers in a process group of its own and
signal it as a terminal, ``docker stop`` or systemd do (the whole group), kill one worker as
the out-of-memory killer does, or kill the plugin itself as NNC's stop button does; the sweep
does the same at a range of delays over the workers' start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import pytest
from model_files import MIDDLE_LAYERS, ArrayDataset, write_tiny_model
from plugin_helpers import REPO, TABULAR_SCRIPT, as_in_a_terminal, error_lines, plugin_env

from nnabla_sgd_influence import InfluenceError, compute_influence
from nnabla_sgd_influence.arguments import InfluenceArguments
from nnabla_sgd_influence.execution.workers import default_workers, physical_cores, units_of_trial
from nnabla_sgd_influence.runtime import signals

pytestmark = pytest.mark.system


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

    path = tmp_path / "flip.nnp"
    write_tiny_model(path, MIDDLE_LAYERS["Flip"])
    train, val = ArrayDataset(16, 0), ArrayDataset(8, 1)
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


# --- runs in a process group of their own, watched through /proc -----------------------------

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
DEADLINE = 120  # seconds for anything that should take a few: only a failure waits this long
NOISE = ("Traceback", "Exception ignored", "Warning", "Fatal Python error", "internal error")


def _launch(samples_dir: Path, tmp_path: Path, n_trials: int = 6):
    """The tabular plugin on 2 workers (mode exact, 3 epochs), in its own process group."""
    cancer = samples_dir / "cancer"
    temp, out = tmp_path / "temp", tmp_path / "out"
    temp.mkdir()
    out.mkdir()
    args = [
        "-m", samples_dir / "models" / "cancer_mlp" / "results.nnp", "-t", cancer / "train.csv",
        "-v", cancer / "val.csv", "-o", out / "o.csv", "-nt", n_trials, "--workers", 2,
        "-bs", 8, "--mode", "exact", "--epochs", 3, "--temp-dir", temp,
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(TABULAR_SCRIPT), *map(str, args)],
        cwd=REPO,
        env=plugin_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to signal like a terminal does
        preexec_fn=as_in_a_terminal,
    )
    return process, temp, out


def _wait_until(condition: Callable[[], object], what: str, process) -> object:
    """Poll ``condition`` until it holds (its value), failing if the run ends or hangs first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}")
        time.sleep(0.005)
    pytest.fail(f"no {what} within {DEADLINE} s")


def _processes() -> List[Tuple[int, int, int, str]]:
    """(pid, parent pid, process group, state) of every process, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append((int(entry), int(fields[1]), int(fields[2]), fields[0]))
    return found


def _children(pid: int) -> List[int]:
    return [p for p, parent, _, state in _processes() if parent == pid and state != "Z"]


def _workers(pid: int) -> List[int]:
    """The worker processes among ``pid``'s children (multiprocessing's spawn_main)."""
    found = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def _group(pgid: int) -> List[int]:
    return [p for p, _, group, state in _processes() if group == pgid and state != "Z"]


def _trials_begun(temp: Path) -> int:
    """How many trial folders the workers have made (each is removed when its trial ends)."""
    return len(list(temp.glob("sgd_influence_*/trial_*")))


def _finish(process) -> str:
    """The run's stderr once every process holding its stdout and stderr has let go."""
    try:
        _, stderr = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"hang: the run did not end within {DEADLINE} s: {stderr[-2000:]}")
    return stderr


def _assert_nothing_left(process, temp: Path, out: Path, label: str = "") -> None:
    """Folders empty, and no process of the group left (what is left must end on its own)."""
    assert list(temp.iterdir()) == [], f"{label} left {list(temp.iterdir())}"
    assert list(out.iterdir()) == [], f"{label} left {list(out.iterdir())}"
    deadline = time.monotonic() + 10
    while _group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group(process.pid) == [], f"{label} processes were left running"


def _assert_one_line(stderr: str, expected: str, label: str = "") -> None:
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(expected), f"{label} {stderr[-2000:]}"
    noise = [word for word in NOISE if word in stderr]
    assert noise == [], f"{label} {noise}: {stderr[-3000:]}"


def test_ctrl_c_ends_every_worker_and_leaves_nothing(samples_dir, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it."""
    process, temp, out = _launch(samples_dir, tmp_path)
    _wait_until(lambda: _trials_begun(temp), "trial", process)
    os.killpg(process.pid, signal.SIGINT)
    stderr = _finish(process)
    assert process.returncode == 130, stderr[-2000:]
    _assert_one_line(stderr, "interrupted")
    _assert_nothing_left(process, temp, out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_and_sighup_to_the_group_mid_run_are_interruptions(samples_dir, tmp_path, signum):
    """What ``docker stop`` and systemd (SIGTERM) and a closed terminal (SIGHUP) send: the
    workers ignore it, the plugin stops the run; multiprocessing's resource tracker, which
    SIGHUP used to kill (its restart printed KeyError tracebacks), stays quiet."""
    process, temp, out = _launch(samples_dir, tmp_path)
    _wait_until(lambda: _trials_begun(temp) == 2, "both workers in a trial", process)
    os.killpg(process.pid, signum)
    stderr = _finish(process)
    assert process.returncode == signals.exit_code(signum), stderr[-2000:]
    _assert_one_line(stderr, "interrupted")
    _assert_nothing_left(process, temp, out)


def test_a_killed_worker_ends_the_run_at_once_on_one_line(samples_dir, tmp_path):
    """A worker the system kills (as the out-of-memory killer does): exit 1, nothing left,
    and at once, not after the other worker has run the remaining 99 trials (about a minute)."""
    process, temp, out = _launch(samples_dir, tmp_path, n_trials=100)
    _wait_until(lambda: _trials_begun(temp) == 2, "both workers in a trial", process)
    workers = _workers(process.pid)
    os.kill(workers[0], signal.SIGKILL)
    killed = time.monotonic()
    stderr = _finish(process)
    took = time.monotonic() - killed
    assert process.returncode == 1, stderr[-2000:]
    _assert_one_line(stderr, "error: a worker process was killed by SIGKILL after 0 of 100")
    assert "fewer --workers" in stderr
    _assert_nothing_left(process, temp, out)
    assert took < 20, f"the run ended {took:.1f} s after the worker was killed"


def test_workers_end_when_the_plugin_is_killed(samples_dir, tmp_path):
    """SIGKILL of the plugin alone (NNC's stop button, Task Manager): its workers notice, let
    go of stdout and stderr (NNC waits for them to close), remove the temporary folder the
    plugin can no longer remove, and end, within seconds."""
    process, temp, out = _launch(samples_dir, tmp_path, n_trials=100)
    _wait_until(lambda: _trials_begun(temp) == 2, "both workers in a trial", process)
    workers = _workers(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    killed = time.monotonic()
    stderr = _finish(process)  # returns once no process holds stdout and stderr
    released = time.monotonic() - killed
    deadline = time.monotonic() + DEADLINE
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = time.monotonic() - killed
    assert "Traceback" not in stderr
    assert released < 20 and ended < 20, f"stderr closed after {released:.1f} s, ended {ended:.1f}"
    _assert_nothing_left(process, temp, out)


# --- the sweep: signals and kills over the workers' start-up ---------------------------------


def _signal_during_start_up(samples_dir, tmp_path: Path, signum: Optional[int], delay: float):
    """One run: ``delay`` seconds after the plugin starts creating processes (the resource
    tracker, then the workers), signal the whole group with ``signum``, or, with None, kill
    the first worker with SIGKILL. Checks the outcome; returns (phase hit, exit code)."""
    name = "SIGKILL to a worker" if signum is None else signal.Signals(signum).name
    label = f"{name} {delay:.2f} s into start-up:"
    process, temp, out = _launch(samples_dir, tmp_path)
    try:
        if signum is None:
            worker = _wait_until(lambda: _workers(process.pid), "worker", process)[0]
        else:
            _wait_until(lambda: _children(process.pid), "child process", process)
        time.sleep(delay)
        phase = _phase(process.pid, temp)
        if signum is None:
            os.kill(worker, signal.SIGKILL)
        else:
            os.killpg(process.pid, signum)
        stderr = _finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    if signum is None:
        expected_code, expected_line = 1, "error: a worker process was killed by SIGKILL"
    else:
        expected_code, expected_line = signals.exit_code(signum), "interrupted"
    assert process.returncode == expected_code, (
        f"{label} exit {process.returncode} {stderr[-2000:]}"
    )
    _assert_one_line(stderr, expected_line, label)
    _assert_nothing_left(process, temp, out, label)
    return phase, process.returncode


def _phase(pid: int, temp: Path) -> str:
    """Where the start-up is: how many workers exist, whether a trial has begun."""
    return f"{len(_workers(pid))} workers, {_trials_begun(temp)} in a trial"


def _sweep(samples_dir, tmp_path: Path, runs) -> List[str]:
    """Every (signal or None, delay) of ``runs``, each in a folder of its own; a summary."""
    outcomes = []
    for index, (signum, delay) in enumerate(runs):
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        phase, code = _signal_during_start_up(samples_dir, folder, signum, delay)
        name = "kill -9 worker" if signum is None else signal.Signals(signum).name
        outcomes.append(f"{name} at {delay:.2f} s ({phase}): exit {code}")
    print("\n".join(outcomes))
    return outcomes


def test_signals_and_kills_during_worker_start_up(samples_dir, tmp_path):
    """From the first process the plugin creates to the first trial (about 2 s here); the
    dense sweep below covers every 60 ms of it."""
    runs = [(signal.SIGINT, 0.0), (signal.SIGHUP, 0.7), (signal.SIGTERM, 1.2), (None, 0.3)]
    assert len(_sweep(samples_dir, tmp_path, runs)) == len(runs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [*STOP_SIGNALS, None], ids=["SIGINT", "SIGTERM", "SIGHUP", "KILL"]
)
def test_dense_sweep_over_worker_start_up(samples_dir, tmp_path, signum):
    """Every 60 ms from 0 to 3 s after the plugin starts creating processes."""
    runs = [(signum, step * 0.06) for step in range(51)]
    assert len(_sweep(samples_dir, tmp_path, runs)) == len(runs)
