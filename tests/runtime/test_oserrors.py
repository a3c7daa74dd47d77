"""Operating-system failures as one line naming the path (a full disk is not a bug)."""

from __future__ import annotations

import errno
import os

import pytest

from nnabla_sgd_influence.errors import InfluenceError, excerpt_path
from nnabla_sgd_influence.runtime.oserrors import os_error_line, reason, reported, too_long

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
