"""Outputs staged beside their destinations and committed together, or not at all."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import full_tmpfs

from nnabla_sgd_influence.errors import InfluenceError, excerpt_path
from nnabla_sgd_influence.runtime import signals
from nnabla_sgd_influence.runtime.staging import StagedOutputs, save_array, staged_outputs

REPO = Path(__file__).resolve().parents[2]


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------
# staging


def test_outputs_are_committed_together(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("old\n")
    with staged_outputs() as outputs:
        with outputs.text(first) as stream:
            stream.write("new a\n")
        with outputs.text(second) as stream:
            stream.write("new b\n")
        assert first.read_text() == "old\n" and not second.exists()
    assert first.read_text() == "new a\n" and second.read_text() == "new b\n"
    assert leftovers(tmp_path) == []


def test_a_failure_before_the_commit_writes_nothing(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("old\n")
    with pytest.raises(ValueError), staged_outputs() as outputs:
        with outputs.text(first) as stream:
            stream.write("new a\n")
        with outputs.text(second) as stream:
            stream.write("half")
            raise ValueError("failed while writing the second file")
    assert first.read_text() == "old\n" and not second.exists()
    assert leftovers(tmp_path) == []


@pytest.fixture
def installed_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signals.install()
    yield
    signals.uninstall()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_pending_signal_stops_the_commit(tmp_path, installed_signals):
    output = tmp_path / "o.csv"
    output.write_text("old\n")
    with pytest.raises(signals.Interrupted), staged_outputs() as outputs:
        with outputs.text(output) as stream:
            stream.write("new\n")
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            pass
    assert output.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_a_failed_rename_puts_back_what_was_replaced(tmp_path):
    first = tmp_path / "a.csv"
    first.write_text("old\n")
    blocker = tmp_path / "b.csv"
    blocker.mkdir()
    (blocker / "inside").write_text("x")  # a non-empty folder cannot be replaced by a file
    outputs = StagedOutputs()
    with outputs.text(first) as stream:
        stream.write("new\n")
    with outputs.text(blocker) as stream:
        stream.write("new\n")
    with pytest.raises(InfluenceError, match="cannot replace"):
        outputs.commit()
    outputs.discard()
    assert first.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    output = tmp_path / "o.csv"
    output.write_text("old\n")
    output.chmod(0o600)
    with staged_outputs() as outputs, outputs.text(output) as stream:
        stream.write("new\n")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_a_long_name_gets_a_temporary_sibling_that_fits(tmp_path):
    output = tmp_path / ("n" * 250 + ".csv")
    with staged_outputs() as outputs, outputs.text(output) as stream:
        stream.write("x\n")
    assert output.read_text() == "x\n"


_LIMITED = """
import resource, sys
sys.path.insert(0, {repo!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.runtime.staging import save_array, staged_outputs
import numpy as np
try:
    if sys.argv[1] == "csv":
        with staged_outputs() as outputs, outputs.text(sys.argv[2]) as stream:
            for row in range(100000):
                stream.write("%d,0.123456789\\n" % row)
    else:
        save_array(sys.argv[2], np.zeros(100000, np.float32))
except InfluenceError as error:
    print(error)
"""


@pytest.mark.parametrize("what", ["csv", "array"])
def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, what):
    """ulimit -f: Python ignores SIGXFSZ, so the write fails with EFBIG."""
    target = tmp_path / ("out.csv" if what == "csv" else "0000001.npy")
    script = _LIMITED.format(repo=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", script, what, str(target)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"cannot write {excerpt_path(target)}: file too large")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 256 kB tmpfs filled to the last few kB (needs root; skipped otherwise)."""
    with full_tmpfs(tmp_path / "full", size_kib=256, filled_kib=240) as mount:
        yield mount


def test_a_full_disk_is_one_line_and_leaves_nothing(full_disk):
    output = full_disk / "o.csv"
    raises = pytest.raises(InfluenceError)
    with raises as caught, staged_outputs() as outputs, outputs.text(output) as stream:
        for row in range(100000):
            stream.write(f"{row},0.123456789\n")
    assert str(caught.value) == f"cannot write {excerpt_path(output)}: no space left on the device"
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
    with pytest.raises(InfluenceError, match="no space left on the device; choose another"):
        save_array(full_disk / "snapshot.npy", np.zeros(100000, np.float32))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
