"""What a run writes: staged outputs, output paths against inputs, OS errors, streams, messages.

``staging.py`` (all-or-nothing commit), ``paths.py`` (never an input, only regular files,
no links, no read-only files, names that fit), ``oserrors.py`` (a full disk is one line),
``runtime/streams.py`` (a failing stderr cannot stop a run) and ``messages.py`` (bounded lines).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnabla_sgd_influence.errors import (
    EXCERPT_CHARS,
    LINE_CHARS,
    InfluenceError,
    excerpt,
    excerpt_path,
    one_line,
)
from nnabla_sgd_influence.runtime import signals
from nnabla_sgd_influence.runtime.oserrors import os_error_line, reason, reported, too_long
from nnabla_sgd_influence.runtime.output_paths import (
    check_outputs,
    check_temporary_parent,
    image_inputs,
    rebase_image_cells,
)
from nnabla_sgd_influence.runtime.staging import StagedOutputs, save_array, staged_outputs
from nnabla_sgd_influence.runtime.streams import SafeStream, open_missing_descriptors

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------
# messages


def test_excerpt_keeps_short_text_and_cuts_long_text():
    assert excerpt("a  b\nc") == "a b c"
    cut = excerpt("x" * 10_000, 20)
    assert cut == "x" * 20 + "... (10000 characters)"
    assert excerpt("\0\0abc\x1b") == "abc"


@pytest.mark.parametrize(
    "path, shown",
    [
        ("/data/train.csv", "/data/train.csv"),
        ("/" + "a" * 200 + "/mnist/train/0001.png", "..." + "a" * 36 + "/mnist/train/0001.png"),
        (
            "/" + "a/" * 200 + "mnist/train/0001.png",
            ".../a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/mnist/train/0001.png",
        ),
        ("C:\\" + "nnc\\" * 40 + "train.csv", "...\\" + "nnc\\" * 11 + "train.csv"),
        ("/x/" + "n" * 300 + ".csv", "..." + "n" * 53 + ".csv"),
        (Path("/") / ("b" * 100) / "c.csv", "..." + "b" * 51 + "/c.csv"),
    ],
)
def test_a_long_path_is_quoted_by_its_end(path, shown):
    assert excerpt_path(path) == shown and len(shown) <= EXCERPT_CHARS


def test_one_line_keeps_the_beginning_and_the_end():
    line = one_line("start " + "y" * 5000 + " the end", 200)
    assert len(line) <= 200 and line.startswith("start") and line.endswith("the end")
    assert one_line("a\nb") == "a b"


# --------------------------------------------------------------------------------------
# oserrors


@pytest.mark.parametrize(
    "number, words",
    [
        (errno.ENOSPC, "no space left"),
        (errno.EFBIG, "file-size limit"),
        (errno.ENAMETOOLONG, "longer than the system allows"),
        (errno.EROFS, "read-only"),
    ],
)
def test_reasons(number, words):
    assert words in reason(OSError(number, os.strerror(number)))


def test_numpy_short_write_is_a_full_disk():
    assert "no space left" in reason(OSError("83118 requested and 4064 written"))


def test_reported_names_the_path_on_one_line(tmp_path):
    with pytest.raises(InfluenceError) as caught, reported(tmp_path / "o.csv", "write"):
        raise OSError(errno.ENOSPC, "No space left on device")
    shown = excerpt_path(tmp_path / "o.csv")
    assert str(caught.value) == f"cannot write {shown}: no space left on the device"


def test_long_names_and_paths_in_bytes(tmp_path):
    assert too_long(tmp_path / ("a" * 200)) is None
    assert "255" in too_long(tmp_path / ("a" * 256))
    assert "255" in too_long(tmp_path / ("é" * 128))  # 256 bytes in UTF-8
    deep = tmp_path.joinpath(*["d" * 200] * 21)
    assert "path is" in too_long(deep / "o.csv")


def test_error_lines_quote_a_path_as_an_excerpt(tmp_path):
    line = os_error_line(OSError(errno.EIO, "x"), "/" + "p" * 5000 + "/o.csv", "write")
    assert line.startswith(f"cannot write ...{'p' * 51}/o.csv: input/output error")


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
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        (mount_point / "filler").write_bytes(b"\0" * (240 * 1024))
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


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


# --------------------------------------------------------------------------------------
# paths


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (folder / "images" / name).write_bytes(b"png")
    train = folder / "train.csv"
    train.write_text("x:image,y:label\nimages/a.png,0\nimages/b.png,1\n")
    model = folder / "results.nnp"
    model.write_bytes(b"zip")
    images = [str(folder / "images" / "a.png"), str(folder / "images" / "b.png")]
    listed = [("the model", model), ("input-train", train), ("input-val", train)]
    return folder, listed + list(image_inputs("input-train", images))


def refusal(outputs, inputs) -> str:
    with pytest.raises(InfluenceError) as caught:
        check_outputs(outputs, inputs)
    line = str(caught.value)
    assert "\n" not in line and len(line) <= LINE_CHARS
    return line


def test_new_and_regular_outputs_are_accepted(inputs, tmp_path):
    folder, listed = inputs
    existing = folder / "old.csv"
    existing.write_text("old")
    check_outputs([("output", folder / "new.csv"), ("step log", existing)], listed)


def test_an_output_that_is_an_input_is_refused(inputs):
    folder, listed = inputs
    assert "is input-train" in refusal([("output", folder / "train.csv")], listed)
    assert "is the model" in refusal([("output", folder / "results.nnp")], listed)
    line = refusal([("output", folder / "images" / ".." / "images" / "b.png")], listed)
    assert "is the image of input-train row 1" in line


def test_an_output_that_hard_links_to_an_image_is_refused(inputs):
    folder, listed = inputs
    os.link(folder / "images" / "a.png", folder / "link.csv")
    line = refusal([("output", folder / "link.csv")], listed)
    assert "is the image of input-train row 0" in line and "(a hard link of it)" in line


def test_a_symbolic_link_is_refused_and_its_target_named(inputs):
    folder, listed = inputs
    (folder / "target.csv").write_text("t")
    (folder / "link.csv").symlink_to("target.csv")
    line = refusal([("output", folder / "link.csv")], listed)
    assert "is a symbolic link (to " in line and "target.csv" in line
    (folder / "dangling.csv").symlink_to("nowhere.csv")
    assert "is a symbolic link" in refusal([("output", folder / "dangling.csv")], listed)


def test_non_regular_files_are_refused(inputs):
    folder, listed = inputs
    os.mkfifo(folder / "fifo.csv")
    assert "is a FIFO" in refusal([("output", folder / "fifo.csv")], listed)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(folder / "socket.csv"))
        assert "is a socket" in refusal([("output", folder / "socket.csv")], listed)
    finally:
        server.close()
    (folder / "dir.csv").mkdir()
    assert "is a folder" in refusal([("output", folder / "dir.csv")], listed)
    if IS_ROOT:
        os.mknod(folder / "null.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert "is a character device" in refusal([("output", folder / "null.csv")], listed)
    for name in ("fifo.csv", "socket.csv", "dir.csv"):
        assert not (folder / name).is_file()  # nothing was replaced


def test_a_read_only_file_is_refused(inputs):
    folder, listed = inputs
    output = folder / "readonly.csv"
    output.write_text("keep")
    output.chmod(0o444)
    assert "is read-only" in refusal([("output", output)], listed)


def test_outputs_must_differ_and_their_folder_exist(inputs):
    folder, listed = inputs
    line = refusal([("output", folder / "o.csv"), ("step log", folder / "./o.csv")], listed)
    assert "is also the output" in line
    assert "folder not found" in refusal([("output", folder / "missing" / "o.csv")], listed)
    assert "names no file" in refusal([("output", folder / "..")], listed)


def test_the_step_log_may_not_be_an_input_either(inputs):
    folder, listed = inputs
    listed = listed + [("input-val", folder / "o_steps.csv")]
    (folder / "o_steps.csv").write_text("x:image,y:label\n")
    line = refusal([("output", folder / "o.csv"), ("step log", folder / "o_steps.csv")], listed)
    assert line.startswith("step log") and "is input-val" in line


def test_names_over_the_limits_are_refused_before_any_work(inputs):
    folder, listed = inputs
    assert "cannot be created: its name is 300 bytes" in refusal(
        [("output", folder / ("n" * 296 + ".csv"))], listed
    )


def test_temporary_parent(tmp_path):
    check_temporary_parent(tmp_path)
    with pytest.raises(InfluenceError, match="not found"):
        check_temporary_parent(tmp_path / "missing")
    with pytest.raises(InfluenceError, match="too deep"):
        check_temporary_parent(tmp_path.joinpath(*["d" * 200] * 20))


def test_image_cells_are_rebased_on_the_output_folder(tmp_path):
    rows = [["images/a.png", "0"], ["images\\b.png", "1"]]
    images = {"x:image": [str(tmp_path / "data/images/a.png"), str(tmp_path / "data/images/b.png")]}
    rebased = rebase_image_cells(["x:image", "y:label"], rows, images, tmp_path / "out" / "o.csv")
    assert rebased == [["../data/images/a.png", "0"], ["../data/images/b.png", "1"]]
    assert rows[0][0] == "images/a.png"  # the table itself is left as it was


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
