"""The ranking CSV: sorted, exact floats, image paths resolvable from its folder, written
whole or not at all."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from plugin_helpers import (
    read_csv,
)

from nnabla_sgd_influence.data.ranking_csv import (
    format_float,
    write_image_csv,
    write_step_log,
    write_tabular_csv,
)
from nnabla_sgd_influence.influence.results import ranking
from nnabla_sgd_influence.runtime.output_paths import relative_path

# --------------------------------------------------------------------------------------
# Output CSV


def test_ranking_is_ascending_and_stable():
    scores = np.array([0.5, -1.0, 0.5, -1.0, 0.0])
    assert ranking(scores).tolist() == [1, 3, 4, 0, 2]


def test_floats_round_trip_exactly():
    for value in (0.1, -1.2345678901234567e-09, 3.0, np.float32(0.3)):
        assert float(format_float(value)) == float(value)


def test_relative_paths_use_forward_slashes(tmp_path):
    image = tmp_path / "data" / "images" / "a.png"
    assert relative_path(image, tmp_path / "out") == "../data/images/a.png"
    assert relative_path(image, tmp_path) == "data/images/a.png"


def test_image_csv_is_sorted_and_resolvable_from_its_folder(tmp_path):
    images = []
    for i in range(4):
        path = tmp_path / "data" / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        images.append(path)
    out = tmp_path / "results" / "influence.csv"
    out.parent.mkdir()
    write_image_csv(out, images, ["3", "1", "4", "1"], np.array([0.2, -0.5, 0.2, 0.0]))
    assert out.read_text().splitlines()[0] == "x:image,y:label,influence,datasource_index"
    rows = read_csv(out)
    assert [r["datasource_index"] for r in rows] == ["1", "3", "0", "2"]
    assert [r["y:label"] for r in rows] == ["1", "1", "3", "4"]
    assert rows[0]["x:image"] == "../data/img/1.png"
    for row in rows:
        assert (out.parent / row["x:image"]).resolve() == images[int(row["datasource_index"])]
    assert float(rows[0]["influence"]) == -0.5


def test_tabular_csv_keeps_the_rows_own_columns(tmp_path):
    out = tmp_path / "t.csv"
    write_tabular_csv(out, ["x__0", "y"], [["1.5", "0"], ["2.25", "1"]], np.array([1.0, -2.0]))
    assert out.read_text() == (
        "index,influence,datasource_index,x__0,y\n1,-2.0,1,2.25,1\n0,1.0,0,1.5,0\n"
    )


def test_step_log(tmp_path):
    steps = [
        SimpleNamespace(epoch=0, step=0, iteration=5, learning_rate=0.1, rows=np.array([2, 0]))
    ]
    write_step_log(tmp_path / "s.csv", steps)
    assert (tmp_path / "s.csv").read_text() == (
        "epoch,step,iteration,learning_rate,rows\n0,0,5,0.1,2 0\n"
    )


class Boom(Exception):
    pass


def failing_labels(count: int):
    """Labels whose text fails after ``count`` rows, as a disk or conversion error would."""

    class Label:
        def __init__(self, index):
            self.index = index

        def __str__(self):
            if self.index >= count:
                raise Boom("write failed")
            return str(self.index)

    return [Label(i) for i in range(10)]


def test_a_failed_write_leaves_no_file(tmp_path):
    images = [tmp_path / f"{i}.png" for i in range(10)]
    out = tmp_path / "out" / "influence.csv"
    out.parent.mkdir()
    with pytest.raises(Boom):
        write_image_csv(out, images, failing_labels(5), np.arange(10.0))
    assert list(out.parent.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "influence.csv"
    out.write_text("previous\n")
    with pytest.raises(Boom):
        write_image_csv(out, [tmp_path / "a.png"] * 10, failing_labels(3), np.zeros(10))
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["influence.csv"]


def test_interrupt_during_write_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)  # the commit's rename
    with pytest.raises(KeyboardInterrupt):
        write_tabular_csv(tmp_path / "t.csv", ["a"], [["1"]], np.zeros(1))
    assert list(tmp_path.iterdir()) == []
