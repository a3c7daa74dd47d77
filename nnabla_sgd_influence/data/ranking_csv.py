"""Write the ranked rows as a CSV that NNC can open, and the step log, whole or not at all.

Every file goes through :mod:`..runtime.staging`: written beside its destination and renamed
into place with the run's other outputs once all are complete. Ranked CSVs are written in the
training CSV's encoding (UTF-8, UTF-8 with a byte-order mark, or cp932), so that whatever read
the input reads the output.
"""

from __future__ import annotations

import csv
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

from ..runtime.output_paths import relative_path
from ..runtime.signals import checkpoints
from ..runtime.staging import StagedOutputs, staged_outputs

log = logging.getLogger(__name__)

IMAGE_HEADER = ["x:image", "y:label", "influence", "datasource_index"]
TABULAR_HEADER = ["index", "influence", "datasource_index"]
STEP_LOG_HEADER = ["epoch", "step", "iteration", "learning_rate", "rows"]
SPREAD_COLUMN = "influence_std"  # standard deviation over the trials, after NNC's columns


def ranking(scores: np.ndarray) -> np.ndarray:
    """Row indices by ascending influence, the order of the ranked CSVs; ties keep the rows'
    order (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), scores))


def format_float(value: float) -> str:
    """Shortest text that reads back to exactly the same float64."""
    return repr(float(value))


def write_image_csv(
    path: Path,
    image_paths: Sequence[Path],
    labels: Sequence[str],
    scores: np.ndarray,
    encoding: str = "utf-8",
    spread: Optional[np.ndarray] = None,
    outputs: Optional[StagedOutputs] = None,
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
    _write_rows(path, IMAGE_HEADER + _spread_header(spread), rows, encoding, outputs)


def write_tabular_csv(
    path: Path,
    columns: Sequence[str],
    table_rows: Sequence[Sequence[str]],
    scores: np.ndarray,
    encoding: str = "utf-8",
    spread: Optional[np.ndarray] = None,
    outputs: Optional[StagedOutputs] = None,
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
    _write_rows(Path(path), header, rows, encoding, outputs)


def _spread_header(spread: Optional[np.ndarray]) -> List[str]:
    return [] if spread is None else [SPREAD_COLUMN]


def _spread_cell(spread: Optional[np.ndarray], row: int) -> List[str]:
    return [] if spread is None else [format_float(spread[row])]


def write_step_log(
    path: Path, steps: Sequence[object], outputs: Optional[StagedOutputs] = None
) -> None:
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
    _write_rows(Path(path), STEP_LOG_HEADER, rows, outputs=outputs)


def _check_lengths(scores: np.ndarray, **lengths: int) -> None:
    for name, length in lengths.items():
        if length != len(scores):
            raise ValueError(f"{len(scores)} scores but {length} {name}")


def _write_rows(
    path: Path,
    header: List[str],
    rows: Iterator[List[str]],
    encoding: str = "utf-8",
    outputs: Optional[StagedOutputs] = None,
) -> None:
    """Stage the CSV in ``outputs`` (committed by the caller with the run's other files), or,
    without ``outputs``, write it whole on its own. An ``encoding`` that cannot hold every
    cell (cp932 and a path the file system gave in another script) falls back to UTF-8 with a
    byte-order mark, with a warning."""
    rows = [header, *checkpoints(rows)]
    encoding = _encoding_for(rows, encoding, path)
    with staged(outputs) as sink, sink.text(path, encoding) as stream:
        csv.writer(stream, lineterminator="\n").writerows(rows)


def _encoding_for(rows: List[List[str]], encoding: str, path: Path) -> str:
    try:
        for row in rows:
            ",".join(row).encode(encoding)
    except UnicodeEncodeError as error:
        log.warning(
            "%s: %s cannot hold '%s'; written as UTF-8 with a byte-order mark",
            path,
            encoding,
            error.object[error.start : error.end],
        )
        return "utf-8-sig"
    return encoding


@contextmanager
def staged(outputs: Optional[StagedOutputs]) -> Iterator[StagedOutputs]:
    """``outputs`` itself, or a set of outputs of its own, committed when the block ends."""
    if outputs is not None:
        yield outputs
    else:
        with staged_outputs() as own:
            yield own
