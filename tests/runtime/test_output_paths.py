"""What a run may write to: never an input, only regular writable files, no links, names
that fit."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from nnabla_sgd_influence.errors import LINE_CHARS, InfluenceError
from nnabla_sgd_influence.runtime.output_paths import (
    check_outputs,
    check_temporary_parent,
    image_inputs,
    rebase_image_cells,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


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
