"""Stage 6: write the ranked rows as a CSV that NNC can open, atomically.

The file is written to a temporary name in the destination folder and renamed over the
destination only when complete, so a reader never sees half a file and a failed run leaves
no file at all. Ranked CSVs are written in the training CSV's encoding (UTF-8, UTF-8 with a
byte-order mark, or cp932), so that whatever read the input reads the output.
"""

from __future__ import annotations

import csv
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Sequence, TextIO

import numpy as np

from .results import ranking

IMAGE_HEADER = ["x:image", "y:label", "influence", "datasource_index"]
TABULAR_HEADER = ["index", "influence", "datasource_index"]
STEP_LOG_HEADER = ["epoch", "step", "iteration", "learning_rate", "rows"]
SPREAD_COLUMN = "influence_std"  # standard deviation over the trials, after NNC's columns


def format_float(value: float) -> str:
    """Shortest text that reads back to exactly the same float64."""
    return repr(float(value))


def relative_path(target: Path, folder: Path) -> str:
    """``target`` relative to ``folder``, with forward slashes (absolute if impossible)."""
    target = Path(os.path.abspath(target))
    try:
        text = os.path.relpath(target, os.path.abspath(folder))
    except ValueError:  # another drive on Windows
        text = str(target)
    return text.replace(os.sep, "/")


def write_image_csv(
    path: Path,
    image_paths: Sequence[Path],
    labels: Sequence[str],
    scores: np.ndarray,
    encoding: str = "utf-8",
    spread: Optional[np.ndarray] = None,
) -> None:
    """Write ``x:image, y:label, influence, datasource_index`` (then ``influence_std`` when
    ``spread`` is given), most harmful row first.

    Image paths are written relative to the output's folder, which is how NNC resolves them.
    """
    path = Path(path)
    _check_lengths(scores, image_paths=len(image_paths), labels=len(labels))
    folder = path.parent
    rows = (
        [
            relative_path(image_paths[i], folder),
            str(labels[i]),
            format_float(scores[i]),
            str(i),
            *_spread_cell(spread, i),
        ]
        for i in ranking(scores)
    )
    _write_rows(path, IMAGE_HEADER + _spread_header(spread), rows, encoding)


def write_tabular_csv(
    path: Path,
    columns: Sequence[str],
    table_rows: Sequence[Sequence[str]],
    scores: np.ndarray,
    encoding: str = "utf-8",
    spread: Optional[np.ndarray] = None,
) -> None:
    """Write ``index, influence, datasource_index`` (then ``influence_std`` when ``spread`` is
    given) and then the row's own columns."""
    _check_lengths(scores, rows=len(table_rows))
    rows = (
        [
            str(i),
            format_float(scores[i]),
            str(i),
            *_spread_cell(spread, i),
            *[str(v) for v in table_rows[i]],
        ]
        for i in ranking(scores)
    )
    header = TABULAR_HEADER + _spread_header(spread) + [str(c) for c in columns]
    _write_rows(Path(path), header, rows, encoding)


def _spread_header(spread: Optional[np.ndarray]) -> List[str]:
    return [] if spread is None else [SPREAD_COLUMN]


def _spread_cell(spread: Optional[np.ndarray], row: int) -> List[str]:
    return [] if spread is None else [format_float(spread[row])]


def write_step_log(path: Path, steps: Sequence[object]) -> None:
    """Write one line per training step: its epoch, step, iteration, learning rate and rows."""
    rows = (
        [
            str(step.epoch),
            str(step.step),
            str(step.iteration),
            format_float(step.learning_rate),
            " ".join(str(int(r)) for r in np.asarray(step.rows).ravel()),
        ]
        for step in steps
    )
    _write_rows(Path(path), STEP_LOG_HEADER, rows)


def _check_lengths(scores: np.ndarray, **lengths: int) -> None:
    for name, length in lengths.items():
        if length != len(scores):
            raise ValueError(f"{len(scores)} scores but {length} {name}")


def _write_rows(
    path: Path, header: List[str], rows: Iterator[List[str]], encoding: str = "utf-8"
) -> None:
    with atomic_text_file(path, encoding) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


@contextmanager
def atomic_text_file(path: Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, else delete it."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    done = False
    try:
        with os.fdopen(handle, "w", encoding=encoding, newline="") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
        done = True
    finally:
        if not done:
            _unlink_quietly(temporary)


@contextmanager
def atomic_binary_file(path: Path) -> Iterator[BinaryIO]:
    """As :func:`atomic_text_file`, for bytes."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    done = False
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
        done = True
    finally:
        if not done:
            _unlink_quietly(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(path: Optional[str]) -> None:
    if path is None:
        return
    with suppress(OSError):
        os.unlink(path)
