"""Standard streams that cannot stop a run."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

from nnabla_sgd_influence.runtime.streams import SafeStream, open_missing_descriptors

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------
# console


def test_a_failing_stream_is_dropped_not_raised():
    read, write = os.pipe()
    os.close(read)
    target = os.fdopen(write, "w")
    stream = SafeStream(target)
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        stream.write("x" * 100_000)
        stream.flush()
    finally:
        signal.signal(signal.SIGPIPE, previous)
    assert stream.broken
    assert stream.write("more") == 4
    with contextlib.suppress(OSError):
        target.close()


def test_progress_bars_on_a_broken_stream_do_not_stop_a_run():
    from tqdm import tqdm

    class Broken:
        def write(self, _text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    stream = SafeStream(Broken())
    assert sum(tqdm(range(5), file=stream, mininterval=0)) == 10
    assert stream.broken


_CLOSED = """
import os, sys
sys.path.insert(0, {repo!r})
from nnabla_sgd_influence.runtime import streams
streams.guard()
handle = os.open({path!r}, os.O_WRONLY | os.O_CREAT)
os.write(2, b"written to descriptor 2\\n")
print(handle, file=open({report!r}, "w"))
"""


def test_closed_standard_descriptors_are_filled_before_files_are_opened(tmp_path):
    path, report = tmp_path / "output.tmp", tmp_path / "report"
    script = _CLOSED.format(repo=str(REPO), path=str(path), report=str(report))
    result = subprocess.run(  # started as with 2>&- >&-
        [sys.executable, "-c", script], preexec_fn=lambda: (os.close(1), os.close(2))
    )
    assert result.returncode == 0
    assert int(report.read_text()) > 2
    assert path.read_bytes() == b""  # nothing meant for stderr landed in the file


def test_open_missing_descriptors_is_a_no_op_when_all_are_open():
    assert open_missing_descriptors() == []
