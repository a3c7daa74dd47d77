"""Error lines of bounded length: excerpts of user data, one capped line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnabla_sgd_influence.errors import EXCERPT_CHARS, excerpt, excerpt_path, one_line

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
