"""The run's one temporary folder: removed on success, error and interruption."""

from __future__ import annotations

import logging

import pytest

from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.runtime.workspace import PREFIX, workspace

# --------------------------------------------------------------------------------------
# The temporary folder


def test_workspace_is_removed_on_success(tmp_path):
    with workspace(tmp_path) as folder:
        (folder / "f").write_text("x")
        assert folder.parent == tmp_path and folder.name.startswith(PREFIX)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exception", [RuntimeError, InfluenceError, KeyboardInterrupt])
def test_workspace_is_removed_on_error_and_interrupt(tmp_path, exception):
    with pytest.raises(exception), workspace(tmp_path) as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "f").write_bytes(b"x" * 100)
        raise exception("stop")
    assert list(tmp_path.iterdir()) == []


def test_workspace_can_be_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with workspace(tmp_path, keep=True) as folder:
        pass
    assert folder.is_dir()
    assert str(folder) in caplog.text


def test_workspace_parent_must_exist(tmp_path):
    with pytest.raises(InfluenceError, match="not found"), workspace(tmp_path / "absent"):
        pass
